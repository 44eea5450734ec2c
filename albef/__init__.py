"""albef: ALBEF (Align before Fuse) as a modular, config-driven vision-language framework."""
__version__ = "0.1.0"
