## Headless Godot 4 test of the control connection's routing id (PROTOCOL.md 2.1.1), driven by
## tests/test_raw_client_retries.py. Run inside a project that has the addon at res://addons/sfbridge:
##   godot --headless --path PROJECT --script res://test_retry.gd -- --control tcp://127.0.0.1:P1 \
##         --frames tcp://127.0.0.1:P2 [--text "a stalled prompt"] --timeout-ms 500 --attempts 5
## First checks the routing id rules without a network: each SFBridgeStream has its own id, "sfb" + 13
## random bytes, `routing_id` hands out a copy, and zmtp.gd refuses identities ZMTP does not allow.
## Then sends one request (a prompt with --text, else a ping) with the given timeout and attempts.
## Prints "ROUTING_ID <hex>", "OK <check>" lines, "REPLY state_id=<n>" or "REPLY ok" on an answer,
## "TIMEOUT" when every attempt went unanswered, then "ALL_OK" (exit 0); "FAIL <reason>" (exit 1).
extends "res://harness.gd"

const StreamScript := preload("res://addons/sfbridge/sfbridge_stream.gd")
const Zmtp := preload("res://addons/sfbridge/zmtp.gd")
const TIMEOUT_S := 60.0

var args := {}
var stream: Node
var req := -1
var elapsed := 0.0


func _initialize() -> void:
	args = user_args()
	if not routing_id_rules():
		return
	if not args.has("control"):
		say("ALL_OK")
		done = true
		quit(0)
		return
	stream = StreamScript.new()
	stream.control_endpoint = args["control"]
	stream.frames_endpoint = args.get("frames", "tcp://127.0.0.1:1")
	stream.request_timeout_ms = int(args.get("timeout-ms", "500"))
	stream.request_attempts = int(args.get("attempts", "5"))
	stream.verbose = true
	stream.reply_received.connect(_on_reply)
	stream.request_failed.connect(_on_failed)
	root.add_child(stream)
	say("ROUTING_ID " + stream.routing_id.hex_encode())
	req = stream.set_prompt(args["text"]) if args.has("text") else stream.ping()


func routing_id_rules() -> bool:
	var one = StreamScript.new()
	var two = StreamScript.new()
	var id: PackedByteArray = one.routing_id
	var ok := check(id.size() == 16 and id.slice(0, 3).get_string_from_ascii() == "sfb",
			"routing id is not sfb + 13 bytes: %s" % id.hex_encode()) \
		and check(one.routing_id == id, "routing_id changed between reads") \
		and check(one.routing_id != two.routing_id, "two nodes got the same routing id %s" % id.hex_encode())
	id[5] = id[5] ^ 0xff
	ok = ok and check(one.routing_id != id, "routing_id hands out its own array, not a copy")
	one.free()
	two.free()
	var longest := PackedByteArray()
	longest.resize(255)
	longest.fill(1)
	var too_long := longest.duplicate()
	too_long.append(1)
	ok = ok and check(Zmtp.identity_error(too_long) != "", "a 256-byte identity was accepted") \
		and check(Zmtp.identity_error(PackedByteArray([0, 1])) != "", "an identity starting with 0 was accepted") \
		and check(Zmtp.identity_error(longest) == "" and Zmtp.identity_error(PackedByteArray()) == "",
			"a valid identity was refused")
	var z = Zmtp.new()
	ok = ok and check(z.open("127.0.0.1", 1, "DEALER", 100, PackedByteArray([0])) == ERR_INVALID_PARAMETER
			and z.state == Zmtp.State.CLOSED, "open() took an identity starting with a zero byte")
	if ok:
		say("OK routing_id_rules")
	return ok


func _on_reply(id: int, op: String, result: Dictionary) -> void:
	if id != req or done:
		return
	say("REPLY state_id=%d" % int(result.get("state_id", -1)) if op == "prompt" else "REPLY ok")
	finish()


func _on_failed(id: int, _op: String, code: String, message: String) -> void:
	if id != req or done:
		return
	if check(code == "timeout", "request failed: %s: %s" % [code, message]):
		say("TIMEOUT")
		finish()


func finish() -> void:
	done = true
	stream.stop()
	say("ALL_OK")
	quit(0)


func _process(delta: float) -> bool:
	elapsed += delta
	if not done and elapsed > TIMEOUT_S:
		fail("no reply and no request_failed within %d s" % TIMEOUT_S)
	return done
