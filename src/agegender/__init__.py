"""agegender: train, evaluate and run face gender and age classifiers."""

__version__ = "0.1.0"
