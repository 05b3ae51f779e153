"""mooseng-dashboard: the web monitor (masters, chunkservers, disks, chunk states, live charts).

A sampler thread reads the masters every few seconds (collector.py); the HTTP server (server.py)
answers the page and its JSON API (api.py) from the latest sample, so browsers add no load to the
masters however many there are.
"""
