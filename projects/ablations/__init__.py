"""projects/ablations as importable modules (`python -m projects.ablations.<script>`)."""
