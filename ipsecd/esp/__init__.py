"""ESP (RFC 4303): SAs, SAD, SPD, anti-replay and packet transforms, sans-I/O."""
