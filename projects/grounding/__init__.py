"""projects/grounding as importable modules (`python -m projects.grounding.<script>`)."""
