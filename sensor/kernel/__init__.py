"""The sensor's view of the gateway's kernel: netlink (one module, the only pyroute2 user),
conntrack, neighbours/links/addresses, and nftables."""
