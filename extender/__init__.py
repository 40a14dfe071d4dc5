"""extract-extender: a metrics-aware scheduler extender for Kubernetes."""

__version__ = "0.1.0"
