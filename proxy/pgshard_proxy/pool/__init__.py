"""Server connections: the raw backend protocol connection and pools of them per member."""
