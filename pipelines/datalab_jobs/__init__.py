"""DataLab notebook jobs: papermill runs in containers of the lab's images."""
