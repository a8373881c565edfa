"""The asyncio shell around the sans-I/O engines (what daemon.py was, in parts).

- ike_shell.py: feeds IKE datagrams and time to the manager, sends what it returns,
  arms its timer, and hands the events to the parts below (aioquic's protocol.py).
- installer.py: the only daemon-side table of Child SAs; installs, retires and
  removes them in the data plane and keeps the ordering contract per IKE SA.
- policy.py: what a connection does on its own (start, trap, close/dpd actions,
  restarts), decided from the events' causes.
- control.py: the handlers behind the control socket, and views.py their shapes.
"""
