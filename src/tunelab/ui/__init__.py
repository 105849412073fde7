"""The web dashboard (``tunelab ui``, or ``tunelab serve --ui``): runs, live curves, comparisons, data,
models and lineage, new runs, a playground, blind review, A/B tests and feedback."""
