"""Analytics over the catalog: the lab's SQL questions and the drift check."""
