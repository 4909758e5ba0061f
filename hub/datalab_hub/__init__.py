"""DataLab's JupyterHub glue, installed into the hub image."""
