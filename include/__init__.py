"""Library code for the review-sentiment pipeline, one package per concern; imports run one way:
pipeline -> {data, model, serving, jobs, analytics} -> common. ``scripts`` is container code."""
