"""One module per tab, in the order a person works: subject, train, jobs, evaluate, export, generate."""
