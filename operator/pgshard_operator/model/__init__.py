"""The operator's view of its custom resource: parsed specs (``spec``)."""
