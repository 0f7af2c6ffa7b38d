## The control connection of an SFBridgeStream: requests queued and sent one at a time over a DEALER
## with timeout + retry ("Lazy Pirate", PROTOCOL.md 1.2), each socket announcing the same routing id so a
## retry on a new socket is answered from the daemon's memory instead of applied twice (2.1.1).
##
## Non-blocking: the owner calls poll() every frame. Answers come as the signals replied / failed, which
## sfbridge_stream.gd turns into its reply_received / request_failed / status_received.
extends RefCounted

const MsgPack := preload("msgpack.gd")
const Zmtp := preload("zmtp.gd")
## Pause before a retry, on top of each attempt's timeout_ms.
const RETRY_PAUSE_MS := 250

## A request succeeded: the reply's `result` map.
signal replied(request_id: int, op: String, result: Dictionary)
## A request failed: a daemon error code (PROTOCOL.md 2.4), "timeout", "too_large", "invalid_value" or
## "cancelled".
signal failed(request_id: int, op: String, code: String, message: String)

## Per-request timeout and attempts, and the endpoint as the user gave it (names it in messages); the
## owner keeps them in step with its exported settings.
var timeout_ms := 2000
var attempts := 3
var endpoint := ""
## The routing id every control connection announces (READY Identity): "sfb" + 13 random bytes, one
## per channel, so one per node. Read-only (a copy).
var routing_id: PackedByteArray:
	get:
		return _routing_id.duplicate()

var _host := ""
var _port := 0
var _log: Callable
var _control: Zmtp
var _queue: Array = []  # pending requests: {id, op, body, attempt, deadline, retry_at, sent}
var _inflight: Dictionary = {}
var _next_id := 1
var _routing_id := _new_routing_id()


## log: called with a diagnostic line (attempts that failed, ...).
func _init(log: Callable) -> void:
	_log = log


## Where requests go (from Zmtp.parse_endpoint).
func set_address(host: String, port: int) -> void:
	_host = host
	_port = port


## Queues any op with arguments. Returns the request id.
func request(op: String, args := {}) -> int:
	var id := _next_id
	_next_id += 1
	var msg := args.duplicate()
	msg["op"] = op
	msg["id"] = id
	var body := MsgPack.encode(msg)
	if body.size() > 65536:
		_emit_failed.call_deferred(id, op, "too_large", "request is %d bytes (limit 65536)" % body.size())
		return id
	_queue.append({"id": id, "op": op, "body": body, "attempt": 0, "deadline": 0, "retry_at": 0, "sent": false})
	return id


## A request refused before sending: failed(id, op, "invalid_value", why) on the next frame.
func refuse(op: String, why: String) -> int:
	var id := _next_id
	_next_id += 1
	push_warning("sfbridge: %s not sent: %s" % [op, why])
	_emit_failed.call_deferred(id, op, "invalid_value", why)
	return id


## Closes the connection; pending requests fail with code "cancelled" and message why.
func cancel_all(why: String) -> void:
	if _control:
		_control.close("stopped")
		_control = null
	var pending := _queue.duplicate()
	if not _inflight.is_empty():
		pending.push_front(_inflight)
	_queue.clear()
	_inflight = {}
	for r in pending:
		failed.emit(r.id, r.op, "cancelled", why)


func _emit_failed(id: int, op: String, code: String, message: String) -> void:
	failed.emit(id, op, code, message)


## "sfb" + 13 random bytes, as the Python client makes it: the leading "s" keeps the first byte non-zero
## (ZMTP reserves a zero first byte); 104 random bits keep two clients from ever sharing an id (a shared
## id would hand one client's replies to the other).
static func _new_routing_id() -> PackedByteArray:
	var id := "sfb".to_ascii_buffer()
	id.append_array(Crypto.new().generate_random_bytes(13))
	return id


## Advances the request in flight (or starts the next queued one); call every frame.
func poll() -> void:
	if _inflight.is_empty():
		if _queue.is_empty():
			if _control:
				_control.poll()  # keep the connection serviced (PING) while idle
				if _control.state == Zmtp.State.CLOSED:
					_control = null
			return
		_inflight = _queue.pop_front()
		_start_attempt()
	var now := Time.get_ticks_msec()
	if _control == null:
		if now >= _inflight.retry_at:
			_control = Zmtp.new()
			_control.open(_host, _port, "DEALER", timeout_ms, _routing_id)
			_inflight.deadline = now + timeout_ms  # the attempt's clock starts here
		else:
			return
	var messages: Array = _control.poll()
	if _control.is_open() and not _inflight.sent:
		_control.send_message([_inflight.body])
		_inflight.sent = true
	for m in messages:
		var dec := MsgPack.decode(m[m.size() - 1])  # DEALER: [body]; tolerate a REQ delimiter
		if not dec.ok or typeof(dec.value) != TYPE_DICTIONARY:
			continue
		var rep: Dictionary = dec.value
		if rep.get("id") != null and int(rep.get("id")) != _inflight.id:
			continue  # a late reply to an earlier request
		_finish(rep)
		return
	if _control.state == Zmtp.State.CLOSED or now > _inflight.deadline:
		var why: String = _control.error if _control.state == Zmtp.State.CLOSED else "no reply within %d ms" % timeout_ms
		_control.close("timeout")
		_control = null  # Lazy Pirate: a fresh socket (same routing id) for the next attempt
		_log.call("%s attempt %d/%d: %s" % [_inflight.op, _inflight.attempt, attempts, why])
		if _inflight.attempt >= attempts:
			var r := _inflight
			_inflight = {}
			failed.emit(r.id, r.op, "timeout",
				"sfbridge daemon did not answer '%s' at %s after %d attempts (is `sfbridge serve` running?)"
				% [r.op, endpoint, attempts])
		else:
			# A refused connection fails at once: give a restarting daemon a moment.
			_start_attempt(RETRY_PAUSE_MS)


## Next attempt of the request in flight, its socket opened after delay_ms. The attempt's reply
## timeout starts when that socket is opened, so the pause before a retry does not shorten it:
## every attempt gets the full timeout_ms (PROTOCOL.md 1.2).
func _start_attempt(delay_ms := 0) -> void:
	var now := Time.get_ticks_msec()
	_inflight.attempt += 1
	_inflight.sent = false
	_inflight.retry_at = now + delay_ms
	_inflight.deadline = _inflight.retry_at + timeout_ms


func _finish(rep: Dictionary) -> void:
	var r := _inflight
	_inflight = {}
	if rep.get("ok", false):
		var result: Dictionary = rep.get("result", {}) if typeof(rep.get("result")) == TYPE_DICTIONARY else {}
		replied.emit(r.id, r.op, result)
	else:
		var e: Dictionary = rep.get("error", {}) if typeof(rep.get("error")) == TYPE_DICTIONARY else {}
		failed.emit(r.id, r.op, str(e.get("code", "bad_reply")), str(e.get("message", "")))
