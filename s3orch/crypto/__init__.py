"""Envelope encryption, pure: object framing (ours and the Go system's SENC v1), master keys,
and streaming seal/open over async byte iterators. Nothing here touches Twisted or the network.
"""
