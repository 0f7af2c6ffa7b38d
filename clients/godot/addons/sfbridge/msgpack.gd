## MessagePack subset for the sfbridge protocol (pure GDScript, no engine extensions).
##
## Decodes nil, bool, every int width, float32/float64, str, bin, array, map (ext values become
## a Dictionary {"ext": type, "data": PackedByteArray}). Maps come back as Dictionary, arrays as
## Array, bin as PackedByteArray. Note: GDScript ints are signed 64-bit, so uint64 values above
## 2^63-1 wrap around (the protocol never sends such values).
extends RefCounted

const MAX_DEPTH := 64


## Encodes a Variant (null, bool, int, float, String/StringName, PackedByteArray, Array,
## Dictionary) into msgpack bytes. Floats are written as float64.
static func encode(value) -> PackedByteArray:
	var out := PackedByteArray()
	_write(out, value)
	return out


## Decodes one value from the whole buffer. Returns {"ok": true, "value": v} or
## {"ok": false, "error": "..."}.
static func decode(buf: PackedByteArray) -> Dictionary:
	var st := {"pos": 0, "err": "", "depth": 0}
	var v = _read(buf, st)
	if st.err != "":
		return {"ok": false, "error": st.err}
	if st.pos != buf.size():
		return {"ok": false, "error": "trailing bytes after msgpack value"}
	return {"ok": true, "value": v}


static func _put_be(out: PackedByteArray, v: int, n: int) -> void:
	for i in range(n - 1, -1, -1):
		out.append((v >> (8 * i)) & 0xff)


## Index i (a field of 1 << i bytes) of the narrowest width from first to last that holds v
## (unsigned for v >= 0, two's complement for v < 0); last when none is narrower.
static func _width_index(v: int, first: int, last: int) -> int:
	var i := first
	while i < last:
		var bits := 8 << i
		if (v >= 0 and v < (1 << bits)) or (v < 0 and v >= -(1 << (bits - 1))):
			break
		i += 1
	return i


## Writes v after the tag of the narrowest member of a width family: first_tag carries a field
## of 1 << first bytes and each next tag doubles it, up to 1 << last bytes (the tags of one
## family are consecutive: str8/16/32, bin8/16/32, array16/32, map16/32, uint8..64, int8..64).
static func _write_sized(out: PackedByteArray, v: int, first_tag: int, first: int, last: int) -> void:
	var i := _width_index(v, first, last)
	out.append(first_tag + i - first)
	_put_be(out, v, 1 << i)


## Header of a str/bin/array/map of n items: the fix form (fix_tag | n) when n <= fix_max, else
## the narrowest length field of the family (see _write_sized).
static func _write_head(out: PackedByteArray, n: int, fix_tag: int, fix_max: int, first_tag: int, first: int) -> void:
	if n <= fix_max:
		out.append(fix_tag | n)
	else:
		_write_sized(out, n, first_tag, first, 2)


static func _write(out: PackedByteArray, v) -> void:
	match typeof(v):
		TYPE_NIL:
			out.append(0xc0)
		TYPE_BOOL:
			out.append(0xc3 if v else 0xc2)
		TYPE_INT:
			_write_int(out, v)
		TYPE_FLOAT:
			var tmp := PackedByteArray()
			tmp.resize(8)
			tmp.encode_double(0, v)
			out.append(0xcb)
			for i in range(7, -1, -1):
				out.append(tmp[i])
		TYPE_STRING, TYPE_STRING_NAME:
			var b: PackedByteArray = String(v).to_utf8_buffer()
			_write_head(out, b.size(), 0xa0, 31, 0xd9, 0)  # fixstr, str8/16/32
			out.append_array(b)
		TYPE_PACKED_BYTE_ARRAY:
			_write_head(out, v.size(), 0, -1, 0xc4, 0)  # bin8/16/32 (no fix form)
			out.append_array(v)
		TYPE_ARRAY, TYPE_PACKED_INT32_ARRAY, TYPE_PACKED_INT64_ARRAY, TYPE_PACKED_FLOAT64_ARRAY, \
		TYPE_PACKED_FLOAT32_ARRAY, TYPE_PACKED_STRING_ARRAY:
			_write_head(out, v.size(), 0x90, 15, 0xdc, 1)  # fixarray, array16/32
			for item in v:
				_write(out, item)
		TYPE_DICTIONARY:
			_write_head(out, v.size(), 0x80, 15, 0xde, 1)  # fixmap, map16/32
			for k in v:
				_write(out, k)
				_write(out, v[k])
		_:
			push_error("sfbridge msgpack: cannot encode a value of type %s" % type_string(typeof(v)))
			out.append(0xc0)


static func _write_int(out: PackedByteArray, v: int) -> void:
	if v >= -32 and v <= 0x7f:
		out.append(v & 0xff)  # positive / negative fixint
	elif v >= 0:
		_write_sized(out, v, 0xcc, 0, 3)  # uint8/16/32/64
	else:
		_write_sized(out, v, 0xd0, 0, 3)  # int8/16/32/64


static func _need(buf: PackedByteArray, st: Dictionary, n: int) -> bool:
	if st.err != "":
		return false
	if n < 0 or st.pos + n > buf.size():
		st.err = "truncated msgpack data"
		return false
	return true


static func _uint(buf: PackedByteArray, st: Dictionary, n: int) -> int:
	if not _need(buf, st, n):
		return 0
	var v := 0
	for i in n:
		v = (v << 8) | buf[st.pos + i]
	st.pos += n
	return v


static func _sint(buf: PackedByteArray, st: Dictionary, n: int) -> int:
	var v := _uint(buf, st, n)
	if n < 8 and v >= (1 << (8 * n - 1)):
		v -= (1 << (8 * n))
	return v


static func _bytes(buf: PackedByteArray, st: Dictionary, n: int) -> PackedByteArray:
	if not _need(buf, st, n):
		return PackedByteArray()
	var b := buf.slice(st.pos, st.pos + n)
	st.pos += n
	return b


static func _float(buf: PackedByteArray, st: Dictionary, n: int) -> float:
	if not _need(buf, st, n):
		return 0.0
	var tmp := PackedByteArray()
	tmp.resize(n)
	for i in n:
		tmp[i] = buf[st.pos + n - 1 - i]  # big-endian on the wire, little-endian decode_*
	st.pos += n
	return tmp.decode_float(0) if n == 4 else tmp.decode_double(0)


enum Kind { UINT, INT, BIN, STR, EXT, FIXEXT, ARRAY, MAP }

## Width families: [first tag, last tag, kind, width index of the first tag's field]; each next
## tag of a family doubles the field (1 << index bytes). For UINT/INT the field is the value,
## for FIXEXT there is no field (the width is the data size), for the others it is a length.
const FAMILIES := [
	[0xc4, 0xc6, Kind.BIN, 0],
	[0xc7, 0xc9, Kind.EXT, 0],
	[0xcc, 0xcf, Kind.UINT, 0],
	[0xd0, 0xd3, Kind.INT, 0],
	[0xd4, 0xd8, Kind.FIXEXT, 0],
	[0xd9, 0xdb, Kind.STR, 0],
	[0xdc, 0xdd, Kind.ARRAY, 1],
	[0xde, 0xdf, Kind.MAP, 1],
]


static func _read(buf: PackedByteArray, st: Dictionary):
	if not _need(buf, st, 1):
		return null
	var t: int = buf[st.pos]
	st.pos += 1
	if t <= 0x7f:
		return t
	if t >= 0xe0:
		return t - 256
	if (t & 0xf0) == 0x80:
		return _sized(buf, st, Kind.MAP, t & 0x0f)
	if (t & 0xf0) == 0x90:
		return _sized(buf, st, Kind.ARRAY, t & 0x0f)
	if (t & 0xe0) == 0xa0:
		return _sized(buf, st, Kind.STR, t & 0x1f)
	match t:
		0xc0:
			return null
		0xc2:
			return false
		0xc3:
			return true
		0xca:
			return _float(buf, st, 4)
		0xcb:
			return _float(buf, st, 8)
	for f in FAMILIES:
		if t >= f[0] and t <= f[1]:
			var width: int = 1 << (f[3] + t - f[0])
			match f[2]:
				Kind.UINT:
					return _uint(buf, st, width)
				Kind.INT:
					return _sint(buf, st, width)
				Kind.FIXEXT:
					return _ext(buf, st, width)
				_:
					return _sized(buf, st, f[2], _uint(buf, st, width))
	st.err = "invalid msgpack type byte 0x%02x" % t
	return null


## A value of n items (bytes for BIN/STR/EXT, elements for ARRAY, pairs for MAP).
static func _sized(buf: PackedByteArray, st: Dictionary, kind: int, n: int):
	match kind:
		Kind.BIN:
			return _bytes(buf, st, n)
		Kind.STR:
			return _bytes(buf, st, n).get_string_from_utf8()
		Kind.EXT:
			return _ext(buf, st, n)
		Kind.ARRAY:
			return _container(buf, st, n, false)
		_:
			return _container(buf, st, n, true)


static func _ext(buf: PackedByteArray, st: Dictionary, n: int):
	if not _need(buf, st, 1):
		return null
	var type: int = buf[st.pos]
	st.pos += 1
	if type >= 128:
		type -= 256
	return {"ext": type, "data": _bytes(buf, st, n)}


## An array of n elements, or (is_map) a map of n key/value pairs.
static func _container(buf: PackedByteArray, st: Dictionary, n: int, is_map: bool):
	st.depth += 1
	if st.depth > MAX_DEPTH:
		st.err = "msgpack nesting too deep"
		return null
	if not _need(buf, st, n):  # every element takes at least one byte
		return null
	var out = []
	if is_map:
		out = {}
	for i in n:
		var k = _read(buf, st)
		if is_map:
			var v = _read(buf, st)
			if st.err == "":
				out[k] = v
		else:
			out.append(k)
		if st.err != "":
			return null
	st.depth -= 1
	return out
