"""projects/scaling as importable modules (`python -m projects.scaling.<script>`)."""
