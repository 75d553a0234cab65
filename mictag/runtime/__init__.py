"""The scanning runtime: discovery, decode, windows, batching, backends, results. Never imports
torch unless the torch backend is chosen."""
