"""The runs service: starting runs from any lead list, run views and controls, the do-not-call list,
and the one set of rules every list is checked by; the API's routes and the dashboard call it."""
