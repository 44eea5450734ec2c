"""projects/noisy_pairs as importable modules (`python -m projects.noisy_pairs.<script>`)."""
