"""Board-independent charger logic. See docs/architecture.md."""

VERSION = "0.1.0"
