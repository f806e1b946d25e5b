"""The ground floor: configuration, atomic IO, locks and the error kinds. Imports nothing of ours."""
