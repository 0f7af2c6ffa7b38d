## Headless Godot 4 test of the sfbridge addon against a real daemon (driven by
## tests/test_godot_client.py). Run inside a project that has the addon at res://addons/sfbridge:
##   godot --headless --path PROJECT --script res://test_client.gd -- \
##         --control tcp://127.0.0.1:P1 --frames tcp://127.0.0.1:P2 --width 160 --height 96 \
##         --msgpack-hex HEX [--restart]
## Other modes: --heartbeat-seconds N (frames from a heartbeating XPUB) and --retry-timing
## (--control at a peer that never answers: times one request's attempts).
## Prints "OK <check> ..." lines, "READY_FOR_RESTART" (the pytest then kills and restarts the
## daemon on the same ports), and finally "ALL_OK" (exit 0) or "FAIL <reason>" (exit 1).
extends "res://harness.gd"

const MsgPack := preload("res://addons/sfbridge/msgpack.gd")
const StreamScript := preload("res://addons/sfbridge/sfbridge_stream.gd")
const TIMEOUT_S := 100.0

var args := {}
var jpeg: Node
var rgb: Node
var rect: TextureRect
var phase := "frames"
var phase_started := 0.0
var elapsed := 0.0
var jpeg_headers: Array = []
var rgb_frames := 0
var events: Array = []
var replies := {}
var failures := {}
var prompt_req := -1
var prompt_state := -1
var old_stream := ""
var status_map := {}
var width := 0
var height := 0
var retry_req := -1
var retry_sent_ms := 0
var retry_failed_ms := -1
# issue 10 steering: a weighted blend, then a scheduled prompt with a scheduled-and-cancelled seed
var bad_req := -1
var w_req := -1
var w_reply := {}
var s_req := -1
var c_req := -1
var cancel_req := -1
var s_reply := {}
var c_state := -1
var target := -1
var steer_stream := ""


func _initialize() -> void:
	args = user_args()
	width = int(args.get("width", "0"))
	height = int(args.get("height", "0"))
	if args.has("heartbeat-seconds"):
		phase = "heartbeat"
		jpeg = make_stream("jpeg")
		return
	if args.has("retry-timing"):
		phase = "retry_timing"
		jpeg = make_stream("jpeg")
		jpeg.request_failed.connect(func(id, op, code, message):
			failures[id] = code
			retry_failed_ms = Time.get_ticks_msec())
		retry_sent_ms = Time.get_ticks_msec()
		retry_req = jpeg.ping()
		return
	msgpack_checks()
	rect = TextureRect.new()
	rect.name = "View"
	root.add_child(rect)
	jpeg = make_stream("jpeg")
	rgb = make_stream("rgb24")
	jpeg.frame_received.connect(_on_jpeg)
	jpeg.event_received.connect(func(ev): events.append(ev))
	rgb.frame_received.connect(_on_rgb)
	jpeg.reply_received.connect(func(id, op, result): replies[id] = result)
	jpeg.request_failed.connect(func(id, op, code, message): failures[id] = code)
	jpeg.status_received.connect(func(st): status_map = st)
	say("OK started")


func make_stream(fmt: String) -> Node:
	var s = StreamScript.new()
	s.name = "Stream_" + fmt
	s.format = fmt
	s.control_endpoint = args.get("control", "tcp://127.0.0.1:5555")
	s.frames_endpoint = args.get("frames", "tcp://127.0.0.1:5556")
	s.verbose = true
	if fmt == "jpeg" and rect != null:
		s.target = NodePath("../View")
	root.add_child(s)
	return s


func _on_jpeg(tex: ImageTexture, h: Dictionary) -> void:
	jpeg_headers.append(h)
	if not check(tex == jpeg.texture, "signal texture is not the node's texture"):
		return
	check(tex.get_width() == int(h.w) and tex.get_height() == int(h.h),
		"texture %dx%d vs header %sx%s" % [tex.get_width(), tex.get_height(), h.w, h.h])
	check(jpeg.image.get_width() == width and jpeg.image.get_height() == height,
		"decoded JPEG image %dx%d, expected %dx%d" % [jpeg.image.get_width(), jpeg.image.get_height(), width, height])
	check(h.get("format") == "jpeg" and int(h.get("v", 0)) == 1, "bad jpeg header %s" % h)


func _on_rgb(tex: ImageTexture, h: Dictionary) -> void:
	rgb_frames += 1
	check(rgb.image.get_format() == Image.FORMAT_RGB8, "rgb24 image format %d" % rgb.image.get_format())
	check(rgb.image.get_width() == width and rgb.image.get_height() == height, "rgb24 image size")
	check(rgb.image.get_data().size() == width * height * 3, "rgb24 data size")
	check(h.get("format") == "rgb24", "bad rgb24 header")


func msgpack_checks() -> void:
	# Our encoder -> printed hex (pytest decodes it with Python's msgpack).
	var mine := {"op": "prompt", "id": 7, "neg": -100000, "big": 1 << 40, "f64": 3.5, "nil": null,
		"yes": true, "bin": PackedByteArray([0, 255]), "arr": [1, "two", 3.0], "s300": "y".repeat(300),
		"i8": -100, "u16": 60000}
	say("MSGPACK_ENCODED " + MsgPack.encode(mine).hex_encode())
	# Python's encoding -> our decoder -> printed JSON (pytest compares).
	if args.has("msgpack-hex"):
		var dec := MsgPack.decode(String(args["msgpack-hex"]).hex_decode())
		if not check(dec.ok, "msgpack decode: %s" % dec.get("error", "")):
			return
		var v: Dictionary = dec.value
		v["b"] = Array(v["b"])  # bin -> list of ints for JSON
		say("MSGPACK_DECODED " + JSON.stringify(v, "", true, true))
	# Round trips and error handling.
	for x in [0, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, -1, -32, -33, -128, -129,
			-32768, -32769, -2147483648, -2147483649, 1.5, "", "é", true, false, null, [], {}]:
		var back := MsgPack.decode(MsgPack.encode(x))
		if not check(back.ok and typeof(back.value) == typeof(x) and back.value == x, "round trip of %s" % [x]):
			return
	check(not MsgPack.decode("da0010ab".hex_decode()).ok, "truncated data must fail")
	check(MsgPack.decode("ca3fc00000".hex_decode()).value == 1.5, "float32")
	check(MsgPack.decode("cf0000000000000005".hex_decode()).value == 5, "uint64")
	check(MsgPack.decode("d3fffffffffffffffe".hex_decode()).value == -2, "int64")
	if not done:
		say("OK msgpack")


func start_weighted() -> void:
	steer_stream = str(jpeg.last_header.stream)
	bad_req = jpeg.set_weighted_prompt([["a", 0], ["b", 0.0]])  # refused without a round trip
	w_req = jpeg.set_weighted_prompt([["a red desert", 0.7], {"text": "a blue ocean", "weight": 0.3}],
		{"transition": "blend", "blend_blocks": 3, "interp": "linear", "mix": "slerp"})
	jpeg_headers.clear()
	goto("weighted")


func start_scheduled() -> void:
	# 8 blocks past what is on screen (the engine runs about one block ahead): a prompt there, and a
	# seed at the block after, which is cancelled and must never land.
	target = last_block() + 8
	s_req = jpeg.set_prompt("a snowy mountain pass", {"at_block": target})
	c_req = jpeg.set_seed(777, target + 1)
	jpeg_headers.clear()
	goto("scheduled")


func last_block() -> int:
	return int(jpeg.last_header.get("block", -1))


## The `applied` event of sid once a frame past its block has been seen ({} until then). Checks that
## frame headers change state exactly at block: below sid before it, at or above from it on.
func landed(sid: int, block: int) -> Dictionary:
	var applied := {}
	for e in events:
		if e.get("type") == "applied" and int(e.get("state_id", -1)) == sid:
			applied = e
	var after := false
	for h in jpeg_headers:
		if str(h.stream) != steer_stream:
			continue
		if int(h.block) < block and not check(int(h.state) < sid, "block %s has state %s before %d lands at %d" % [h.block, h.state, sid, block]):
			return {}
		if int(h.block) >= block and not check(int(h.state) >= sid, "block %s has state %s below %d (lands at %d)" % [h.block, h.state, sid, block]):
			return {}
		after = after or int(h.block) > block
	if applied.is_empty() or not after:
		return {}
	check(int(applied.block) == block, "applied event of %d at block %s, reply said %d" % [sid, applied.block, block])
	return applied


func goto(p: String) -> void:
	phase = p
	phase_started = elapsed


func _process(delta: float) -> bool:
	elapsed += delta
	if done:
		return true
	if elapsed > TIMEOUT_S:
		fail("timeout in phase %s (jpeg frames %d, rgb frames %d, state %d)"
			% [phase, jpeg_headers.size(), rgb_frames, jpeg.connection_state])
		return true
	var in_phase := elapsed - phase_started
	match phase:
		"heartbeat":
			# Against a libzmq XPUB that PINGs every 100 ms and drops silent peers (pytest):
			# our PONGs must keep the first connection alive.
			if in_phase > float(args["heartbeat-seconds"]):
				if check(jpeg.frames_received > 0 and jpeg.connects == 1,
						"heartbeat: frames %d connects %d" % [jpeg.frames_received, jpeg.connects]):
					say("OK heartbeat frames=%d connects=%d" % [jpeg.frames_received, jpeg.connects])
					goto("finish")
		"retry_timing":
			# The control peer never answers: every attempt must wait its full timeout, the
			# pause before a retry coming on top of it (PROTOCOL.md 1.2).
			if retry_failed_ms >= 0:
				var took := retry_failed_ms - retry_sent_ms
				var least: int = jpeg.request_attempts * jpeg.request_timeout_ms \
					+ (jpeg.request_attempts - 1) * StreamScript.RETRY_PAUSE_MS
				if check(failures.get(retry_req) == "timeout", "retry timing: failure %s" % failures) \
						and check(took >= least, "retry timing: gave up after %d ms, expected >= %d" % [took, least]):
					say("OK retry_timing took_ms=%d least_ms=%d attempts=%d" % [took, least, jpeg.request_attempts])
					goto("finish")
			elif in_phase > 30:
				fail("retry timing: no request_failed after 30 s")
		"frames":
			if jpeg_headers.size() >= 5 and rgb_frames >= 3:
				var seqs := jpeg_headers.map(func(h): return int(h.seq))
				for k in range(1, seqs.size()):
					if not check(seqs[k] > seqs[k - 1], "seq not increasing: %s" % [seqs]):
						return true
				check(rect.texture == jpeg.texture, "TextureRect target did not get the texture")
				if args.has("save-png"):
					check(jpeg.image.save_png(args["save-png"]) == OK, "save_png failed")
				say("OK frames jpeg=%d rgb24=%d size=%dx%d seq=%d dropped=%d" % [jpeg_headers.size(), rgb_frames,
					jpeg.texture.get_width(), jpeg.texture.get_height(), seqs[-1], jpeg.frames_dropped])
				jpeg.status()
				goto("status")
			elif in_phase > 15:
				fail("frames: jpeg %d rgb %d after 15 s" % [jpeg_headers.size(), rgb_frames])
		"status":
			if not status_map.is_empty():
				check(int(status_map.width) == width and int(status_map.height) == height, "status size")
				say("OK status model=%s state_id=%s" % [status_map.model, status_map.state_id])
				jpeg.request("bogus")
				prompt_req = jpeg.set_prompt("a neon city at night", "blend", 2)
				goto("prompt")
			elif in_phase > 10:
				fail("no status reply")
		"prompt":
			if prompt_state < 0 and replies.has(prompt_req):
				prompt_state = int(replies[prompt_req].state_id)
				say("OK prompt_reply state_id=%d applies_at_block=%s" % [prompt_state, replies[prompt_req].applies_at_block])
				jpeg_headers.clear()
			if prompt_state >= 0:
				for h in jpeg_headers:
					if int(h.state) == prompt_state:
						check(int(h.block) >= int(replies[prompt_req].applies_at_block), "state seen before its block")
						say("OK prompt_state seen block=%s after_s=%.2f" % [h.block, in_phase])
						start_weighted()
						break
			if in_phase > 20:
				fail("prompt state %d never seen in frame headers" % prompt_state)
		"weighted":
			if not failures.has(bad_req):
				if in_phase > 5:
					fail("all-zero weights were not refused")
			elif w_reply.is_empty() and replies.has(w_req):
				w_reply = replies[w_req]
				if check(failures[bad_req] == "invalid_value", "all-zero weights failed with %s" % failures[bad_req]) \
						and check(int(w_reply.get("state_id", -1)) > 0 and w_reply.has("applies_at_block")
						and w_reply.get("scheduled") == false, "weighted reply %s" % [w_reply]):
					say("OK weighted_reply state_id=%s applies_at_block=%s" % [w_reply.state_id, w_reply.applies_at_block])
			elif not w_reply.is_empty():
				var ap := landed(int(w_reply.state_id), int(w_reply.applies_at_block))
				if not ap.is_empty():
					if check(ap.get("prompts", []).size() == 2 and ap.get("mix") == "slerp" and ap.get("interp") == "linear"
							and ap.get("transition") == "blend" and int(ap.get("blend_blocks", 0)) == 3,
							"applied event fields %s" % [ap]):
						say("OK weighted_blend state_id=%s block=%s prompt=%s" % [w_reply.state_id, ap.block, ap.prompt])
						start_scheduled()
			if in_phase > 25:
				fail("weighted blend: reply %s failures %s" % [w_reply, failures])
		"scheduled":
			if s_reply.is_empty() and replies.has(s_req) and replies.has(c_req):
				s_reply = replies[s_req]
				c_state = int(replies[c_req].state_id)
				if check(int(s_reply.applies_at_block) == target and s_reply.scheduled == true
						and int(replies[c_req].applies_at_block) == target + 1 and replies[c_req].scheduled == true,
						"scheduled replies %s %s" % [s_reply, replies[c_req]]):
					say("OK scheduled_reply state_id=%s at_block=%d" % [s_reply.state_id, target])
					cancel_req = jpeg.cancel(c_state)
			elif cancel_req >= 0 and replies.has(cancel_req):
				check(int(replies[cancel_req].get("cancelled", -1)) == c_state, "cancel reply %s" % [replies[cancel_req]])
				var ap := landed(int(s_reply.state_id), target)
				if not ap.is_empty() and last_block() > target + 2:
					for h in jpeg_headers:
						if h.stream == steer_stream and not check(int(h.state) < c_state, "cancelled state on screen %s" % [h]):
							return true
					var about := events.filter(func(e): return int(e.get("state_id", -1)) == c_state)
					if check(about.size() == 1 and about[0].type == "cancelled" and about[0].get("reason") == "cancel",
							"events of the cancelled state: %s" % [about]):
						say("OK scheduled_change state_id=%s block=%s cancelled=%d" % [s_reply.state_id, ap.block, c_state])
						goto("errors")
			if in_phase > 30:
				fail("scheduled change: replies %s failures %s" % [replies, failures])
		"errors":
			if failures.values().has("unknown_op"):
				say("OK error unknown_op")
				var applied := events.filter(func(e): return e.get("type") == "applied")
				var stats := events.filter(func(e): return e.get("type") == "stats")
				say("OK events applied=%d stats=%d" % [applied.size(), stats.size()])
				if args.has("restart"):
					old_stream = str(jpeg.last_header.stream)
					say("READY_FOR_RESTART stream=" + old_stream)
					goto("restart")
				else:
					goto("finish")
			elif in_phase > 10:
				fail("no unknown_op failure signal: %s" % failures)
		"restart":
			if jpeg.last_header.get("stream", "") != old_stream and jpeg.frames_shown > 0 \
					and jpeg.connects >= 2 and rgb.connects >= 2:
				say("OK reconnected stream=%s connects=%d after_s=%.2f" % [jpeg.last_header.stream, jpeg.connects, in_phase])
				prompt_req = jpeg.set_prompt("after restart")
				prompt_state = -1
				goto("after_restart")
			elif in_phase > 40:
				fail("no frames from the restarted daemon (state %d, connects %d)" % [jpeg.connection_state, jpeg.connects])
		"after_restart":
			if replies.has(prompt_req):
				say("OK control_after_restart state_id=%s" % replies[prompt_req].state_id)
				goto("finish")
			elif in_phase > 15:
				fail("no prompt reply after the restart: %s" % failures)
		"finish":
			jpeg.stop()
			if rgb:
				rgb.stop()
			check(jpeg.connection_state == 0, "state after stop")
			if not done:
				done = true
				say("ALL_OK")
				quit(0)
	return done
