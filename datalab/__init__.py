"""DataLab: the lab's command line (bring-up, status, logs, demo logins)."""

__version__ = "0.1.0"
