"""projects/synthetic_tasks as importable modules (`python -m projects.synthetic_tasks.<script>`)."""
