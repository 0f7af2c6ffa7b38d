## Minimal ZeroMQ peer (ZMTP 3.x, NULL mechanism) over StreamPeerTCP, fully non-blocking.
##
## One instance is one TCP connection (client side). Call poll() every frame: it advances the
## connection (connect -> greeting -> READY -> open), answers PING with PONG and returns the
## complete messages that arrived (each an Array of PackedByteArray frames). Reconnecting is the
## owner's job (see sfbridge_stream.gd). Protocol: docs/PROTOCOL.md section 1.1.
extends RefCounted

enum State { IDLE, CONNECTING, GREETING, HANDSHAKE, OPEN, CLOSED }

const FLAG_MORE := 1
const FLAG_LONG := 2
const FLAG_COMMAND := 4
## Frames larger than this are treated as a protocol error (garbage on the wire).
const MAX_FRAME := 256 * 1024 * 1024

var state: State = State.IDLE
## Why the connection closed (empty while it is fine).
var error := ""
## Socket-Type announced by the peer's READY command ("XPUB", "ROUTER").
var peer_socket_type := ""
var peer_minor := 0
## Time.get_ticks_msec() of the last bytes received.
var last_rx_ms := 0
## Set once when the handshake completes; the owner clears it after reacting (e.g. subscribing).
var just_opened := false
## Upper bound of bytes read per poll() (keeps one tick short if a flood is waiting).
var max_read_per_poll := 64 * 1024 * 1024

var _tcp := StreamPeerTCP.new()
var _socket_type := "SUB"
var _identity := PackedByteArray()  # READY Identity property; empty: none sent
var _rx := PackedByteArray()
var _rx_pos := 0
var _parts: Array = []
var _connect_started_ms := 0
var _connect_timeout_ms := 2000
var _tx := PackedByteArray()  # bytes of a queued message not yet taken by the kernel (try_send_message)


## Starts connecting to host:port; socket_type is "SUB", "DEALER" or "PUB". Returns OK or an error code.
## connect_timeout_ms bounds the TCP connect plus the ZMTP handshake. identity, when not empty, is sent
## as the READY command's Identity property (the routing id, ZMTP 3.0: 1 to 255 bytes, first byte not
## zero, which RFC 23/37 reserves for ids a ROUTER makes up): a DEALER that reuses one identity on every
## connection lets the daemon's ROUTER recognise a retry on a new socket (PROTOCOL.md 2.1.1). A bad
## identity fails at once (ERR_INVALID_PARAMETER, nothing connected).
func open(host: String, port: int, socket_type: String, connect_timeout_ms := 2000,
		identity := PackedByteArray()) -> int:
	var why := identity_error(identity)
	if why != "":
		push_error("sfbridge: " + why)
		_fail(why)
		return ERR_INVALID_PARAMETER
	_socket_type = socket_type
	_identity = identity
	_connect_timeout_ms = connect_timeout_ms
	_connect_started_ms = Time.get_ticks_msec()
	var err := _tcp.connect_to_host(host, port)
	if err != OK:
		_fail("connect_to_host failed: %s" % error_string(err))
		return err
	state = State.CONNECTING
	return OK


## Why identity cannot be a ZMTP routing id ("" when it can, or when it is empty: no identity).
static func identity_error(identity: PackedByteArray) -> String:
	if identity.size() > 255:
		return "a ZMTP identity is 1 to 255 bytes, got %d" % identity.size()
	if identity.size() > 0 and identity[0] == 0:
		return "a ZMTP identity must not start with a zero byte (reserved for ids the peer makes up)"
	return ""


## Splits "tcp://HOST:PORT" into {host, port} for open(); "*" and "0.0.0.0" (bind addresses) become
## 127.0.0.1. Returns {} and reports the error on anything else (ipc:// included: StreamPeerTCP only
## speaks TCP). what names the endpoint in the error ("endpoint", "input endpoint").
static func parse_endpoint(ep: String, what := "endpoint") -> Dictionary:
	if ep.begins_with("ipc://"):
		push_error("sfbridge: ipc:// endpoints are not supported in GDScript; use tcp://HOST:PORT")
		return {}
	var rest := ep.trim_prefix("tcp://")
	var colon := rest.rfind(":")
	if colon <= 0 or not rest.substr(colon + 1).is_valid_int():
		push_error("sfbridge: %s must look like tcp://HOST:PORT, got '%s'" % [what, ep])
		return {}
	var host := rest.substr(0, colon).trim_prefix("[").trim_suffix("]")
	if host == "*" or host == "0.0.0.0":
		host = "127.0.0.1"
	return {"host": host, "port": rest.substr(colon + 1).to_int()}


func is_open() -> bool:
	return state == State.OPEN


func close(reason := "closed") -> void:
	if state != State.CLOSED:
		if error == "":
			error = reason
		state = State.CLOSED
	_tcp.disconnect_from_host()
	_rx = PackedByteArray()
	_rx_pos = 0
	_tx = PackedByteArray()
	_parts.clear()


func _fail(reason: String) -> void:
	error = reason
	close(reason)


## Sends one message (Array of PackedByteArray frames). Returns false if not open.
func send_message(frames: Array) -> bool:
	if state != State.OPEN:
		return false
	var out := PackedByteArray()
	for i in frames.size():
		_encode_frame(out, frames[i], i < frames.size() - 1, false)
	return _send_raw(out)


## Queues one message without ever blocking: its bytes leave through put_partial_data as the kernel takes
## them, in poll(). Returns false (message not queued) while an earlier one is still leaving or the
## connection is not open: the caller keeps only its newest message and tries again next tick.
func try_send_message(frames: Array) -> bool:
	if state != State.OPEN or not _tx.is_empty():
		return false
	for i in frames.size():
		_encode_frame(_tx, frames[i], i < frames.size() - 1, false)
	_flush_tx()
	return true


## Bytes of the queued message still waiting to leave (0: try_send_message will take a new one).
func tx_pending() -> int:
	return _tx.size()


func _flush_tx() -> void:
	if _tx.is_empty() or state != State.OPEN:
		return
	var res: Array = _tcp.put_partial_data(_tx)
	if res[0] != OK:
		_fail("send failed: %s" % error_string(res[0]))
		return
	var n: int = res[1]
	_tx = _tx.slice(n) if n < _tx.size() else PackedByteArray()


## SUB: subscribe to a topic prefix ("" = everything).
func subscribe(topic: String) -> bool:
	var body := PackedByteArray([1])
	body.append_array(topic.to_utf8_buffer())
	return send_message([body])


## Sends a ZMTP 3.1 PING (only to peers that speak 3.1; they answer PONG).
func send_ping() -> void:
	if state == State.OPEN and peer_minor >= 1:
		var out := PackedByteArray()
		_encode_frame(out, PackedByteArray([4, 0x50, 0x49, 0x4e, 0x47, 0, 0]), false, true)
		_send_raw(out)


func _send_raw(data: PackedByteArray) -> bool:
	var err := _tcp.put_data(data)
	if err != OK:
		_fail("send failed: %s" % error_string(err))
		return false
	return true


static func _encode_frame(out: PackedByteArray, body: PackedByteArray, more: bool, command: bool) -> void:
	var flags := (FLAG_MORE if more else 0) | (FLAG_COMMAND if command else 0)
	var n := body.size()
	if n > 255:
		out.append(flags | FLAG_LONG)
		for i in range(7, -1, -1):
			out.append((n >> (8 * i)) & 0xff)
	else:
		out.append(flags)
		out.append(n)
	out.append_array(body)


func _greeting() -> PackedByteArray:
	var g := PackedByteArray()
	g.resize(64)
	g.fill(0)
	g[0] = 0xff
	g[9] = 0x7f
	g[10] = 3
	g[11] = 0
	var mech := "NULL".to_ascii_buffer()
	for i in mech.size():
		g[12 + i] = mech[i]
	return g


## READY with Socket-Type, and Identity when the owner keeps one routing id across connections.
func _ready_command() -> PackedByteArray:
	var body := PackedByteArray([5])
	body.append_array("READY".to_ascii_buffer())
	_put_property(body, "Socket-Type", _socket_type.to_ascii_buffer())
	if not _identity.is_empty():
		_put_property(body, "Identity", _identity)
	var out := PackedByteArray()
	_encode_frame(out, body, false, true)
	return out


static func _put_property(body: PackedByteArray, name: String, value: PackedByteArray) -> void:
	var n := value.size()
	body.append(name.length())
	body.append_array(name.to_ascii_buffer())
	body.append_array(PackedByteArray([(n >> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]))
	body.append_array(value)


## Advances the connection; returns the messages that completed (Array of Arrays of frames).
func poll() -> Array:
	var messages: Array = []
	if state == State.IDLE or state == State.CLOSED:
		return messages
	_tcp.poll()
	var status := _tcp.get_status()
	if state == State.CONNECTING:
		if status == StreamPeerTCP.STATUS_CONNECTED:
			_tcp.set_no_delay(true)
			state = State.GREETING
			last_rx_ms = Time.get_ticks_msec()
			if not _send_raw(_greeting()):
				return messages
		elif status == StreamPeerTCP.STATUS_ERROR or status == StreamPeerTCP.STATUS_NONE:
			_fail("connection refused")
			return messages
		elif Time.get_ticks_msec() - _connect_started_ms > _connect_timeout_ms:
			_fail("connect timed out")
			return messages
		else:
			return messages
	if status != StreamPeerTCP.STATUS_CONNECTED:
		_fail("connection lost")
		return messages
	var avail := _tcp.get_available_bytes()
	if avail > 0:
		var res: Array = _tcp.get_partial_data(mini(avail, max_read_per_poll))
		if res[0] != OK:
			_fail("read failed: %s" % error_string(res[0]))
			return messages
		var data: PackedByteArray = res[1]
		if data.size() > 0:
			if _rx_pos > 0 and _rx_pos >= _rx.size():
				_rx = data
				_rx_pos = 0
			else:
				_rx.append_array(data)
			last_rx_ms = Time.get_ticks_msec()
	_parse(messages)
	_flush_tx()
	# A peer that accepts TCP but never completes the greeting/READY exchange (not a ZeroMQ
	# socket, or a hung process) must not hold the connection forever: the connect timeout
	# covers the whole handshake, as in the C# client.
	if (state == State.GREETING or state == State.HANDSHAKE) \
			and Time.get_ticks_msec() - _connect_started_ms > _connect_timeout_ms:
		_fail("handshake timed out")
		return messages
	# Compact the buffer once consumed bytes dominate.
	if _rx_pos > 0 and (_rx_pos >= _rx.size() or _rx_pos > 1 << 20):
		_rx = _rx.slice(_rx_pos)
		_rx_pos = 0
	return messages


func _parse(messages: Array) -> void:
	while state != State.CLOSED:
		if state == State.GREETING:
			if _rx.size() - _rx_pos < 64:
				return
			var g := _rx.slice(_rx_pos, _rx_pos + 64)
			_rx_pos += 64
			if g[0] != 0xff or g[9] != 0x7f:
				_fail("peer is not a ZeroMQ endpoint (bad signature)")
				return
			if g[10] < 3:
				_fail("peer speaks ZMTP %d.%d, 3.x is required" % [g[10], g[11]])
				return
			peer_minor = g[11]
			var mech := g.slice(12, 32).get_string_from_ascii()
			if mech != "NULL":
				_fail("peer uses security mechanism %s, only NULL is supported" % mech)
				return
			state = State.HANDSHAKE
			if not _send_raw(_ready_command()):
				return
			continue
		# A frame: flags, size (1 or 8 bytes), body.
		var avail := _rx.size() - _rx_pos
		if avail < 2:
			return
		var flags: int = _rx[_rx_pos]
		if flags & 0xf8:
			_fail("bad ZMTP frame flags 0x%02x" % flags)
			return
		var hdr := 2
		var size := 0
		if flags & FLAG_LONG:
			hdr = 9
			if avail < hdr:
				return
			for i in 8:
				size = (size << 8) | _rx[_rx_pos + 1 + i]
		else:
			size = _rx[_rx_pos + 1]
		if size < 0 or size > MAX_FRAME:
			_fail("ZMTP frame of %d bytes is over the limit" % size)
			return
		if avail < hdr + size:
			return
		var body := _rx.slice(_rx_pos + hdr, _rx_pos + hdr + size)
		_rx_pos += hdr + size
		if flags & FLAG_COMMAND:
			_command(body)
			continue
		if state != State.OPEN:
			_fail("message frame before the handshake completed")
			return
		_parts.append(body)
		if not (flags & FLAG_MORE):
			messages.append(_parts)
			_parts = []


func _command(body: PackedByteArray) -> void:
	if body.size() < 1 or body[0] + 1 > body.size():
		_fail("malformed ZMTP command")
		return
	var name := body.slice(1, 1 + body[0]).get_string_from_ascii()
	var p: int = 1 + body[0]
	if name == "READY":
		if state != State.HANDSHAKE:
			return
		while p < body.size():
			var nl: int = body[p]
			p += 1
			if p + nl + 4 > body.size():
				_fail("malformed READY properties")
				return
			var pname := body.slice(p, p + nl).get_string_from_ascii()
			p += nl
			var vl: int = (body[p] << 24) | (body[p + 1] << 16) | (body[p + 2] << 8) | body[p + 3]
			p += 4
			if p + vl > body.size():
				_fail("malformed READY property value")
				return
			if pname == "Socket-Type":
				peer_socket_type = body.slice(p, p + vl).get_string_from_ascii()
			p += vl
		state = State.OPEN
		just_opened = true
	elif name == "ERROR":
		var reason := ""
		if p < body.size():
			reason = body.slice(p + 1, p + 1 + body[p]).get_string_from_ascii()
		_fail("peer sent ERROR: %s" % reason)
	elif name == "PING":
		# PING: 2-byte TTL, then up to 16 bytes of context that PONG echoes.
		var pong := PackedByteArray([4, 0x50, 0x4f, 0x4e, 0x47])
		if p + 2 < body.size():
			pong.append_array(body.slice(p + 2))
		var out := PackedByteArray()
		_encode_frame(out, pong, false, true)
		_send_raw(out)
	# PONG, SUBSCRIBE, CANCEL, unknown: ignored.
