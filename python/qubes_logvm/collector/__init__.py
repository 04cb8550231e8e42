"""``logvm-collector``: receives lines from qubes over qrexec and stores them sealed.

Modules: :mod:`.daemon` (entry point, timers, signals), :mod:`.server`
(socket, descriptor, connections), :mod:`.lines` (splitting, capping,
escaping, stamping), :mod:`.qubewriter` (per-qube batching, sealing, acks,
rate limit, quota).
"""
