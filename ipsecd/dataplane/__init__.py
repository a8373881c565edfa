"""The only code that touches TUN devices, ESP sockets and netlink."""
