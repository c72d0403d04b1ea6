"""Hot-lead routing: the pure choice of a rep (policy), the shared pool state in Redis (pool),
out-of-office marks (away) and the service that carries a decision out (service).

Import the service from `connector.routing.service`; this package imports nothing heavy itself.
"""
