"""sandboxd: runs integration steps (JavaScript) in fresh, pre-warmed Linux jails."""

__version__ = "0.1.0"
