"""Wire contract (topics, versioned payloads) shared by gateway and hub, and the gateway uplink."""
