"""`outbound`: the dialer's command line, a client of HTTP API v1."""
