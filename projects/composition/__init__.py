"""projects/composition as importable modules (`python -m projects.composition.<script>`)."""
