"""The Kubernetes operator: desired objects, applying them, status, kopf handlers."""
