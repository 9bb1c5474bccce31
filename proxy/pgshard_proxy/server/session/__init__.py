"""A client session of the proxy, one module per concern.

Module map (who owns what; where a new feature plugs in):

``client``         the ``asyncio.Protocol`` per client connection, and the wiring:
                   login, choosing and borrowing servers (``server_for``), the
                   ``pool.backend.Sink`` callbacks, topology changes, the follower
                   watch; states INITIAL -> AUTH -> CONNECTING -> READY -> CLOSED.
``requests``       the request loop (``RequestLoop``): frames in order, a ``Pipeline``
                   state enum, each request's dispatch and its sends; an extended
                   batch is classified once, up to its Sync (``batch_class``).
``startup``        the login before READY (SSL/GSSENC/Cancel/Startup packets, SCRAM/md5
                   exchange) and the startup parameters turned into server settings.
``replicated``     what each server must have before use: the session's prepared
                   statements (re-prepared transparently) and its SET log.
``ordering``       the servers a session borrowed (one per role), the route of each
                   request they still owe an answer, and answers in request order.
``borrowing``      taking a connection from a member's pool; bounded waiting for a
                   new topology when servers cannot be reached (failover).
``follower_watch`` reads on a follower that stopped answering: retry or fail (pure judge).
``proxy_answers``  ``SHOW pgshard.*`` in the extended protocol, answered by the proxy.
(``server.read_only``: a primary answering 25006 "read-only": run again or a clear error.)
(``server.switch_buffer``: requests for a switching shard's primary held until the new one.)

Seams. Who answers a request is ``routing.dispatch`` (SERVERS | PROXY | REFUSE),
taken in ``RequestLoop._handle`` (simple Query) and ``RequestLoop._extended``
(first message of a batch). SERVERS requests go to one server today: the loop
asks its host, ``Session.server_for(classified)``, for the server and route
(consistency routing, borrowing, SET replay) and sends the frames there. Sharding
plugs in at those two dispatch points: ``routing.shardplan`` names the shards; a
one-shard plan takes the same path with the shard chosen, a scatter/broadcast
plan needs a second executor next to the loop (and its answers merged before
``backend_data`` relays them). Statement replication appends its log write where
the loop sends a write request (``b.send`` in ``_handle``/``_extended``); every
message to a server passes through ``BackendConnection.send``, every answer
through ``Session.backend_data``/``backend_ready``; metrics hook there too.
"""
