"""Payment gateway adapters. Everything above this package speaks domain types only."""
