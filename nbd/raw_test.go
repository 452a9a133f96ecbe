package nbd_test

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"lifeboat/nbd"
)

// A READ past the end gets EINVAL and the connection keeps working; a
// WRITE past the end gets ENOSPC (the spec's choice for writes) with its
// payload consumed, so the stream stays in sync.
func TestOutOfRangeRequestsKeepTheConnection(t *testing.T) {
	v := newVolume(t, 1<<20, nil)
	addr := serveExports(t, v.export("disk"))
	c := dial(t, addr)
	size, flags := c.goExport("disk")
	if size != 1<<20 {
		t.Fatalf("size %d", size)
	}
	for _, f := range []uint16{tflagSendFlush, tflagSendFUA, tflagSendTrim, tflagSendZero, tflagMultiConn} {
		if flags&f == 0 {
			t.Errorf("transmission flags %#x lack %#x", flags, f)
		}
	}
	if flags&(tflagReadOnly|tflagSendDF) != 0 {
		t.Errorf("transmission flags %#x: read-only or DF without structured replies", flags)
	}
	expectErr(t, c.do(cmdRead, 0, 1<<20-512, 1024, nil), eINVAL, "read across the end")
	expectErr(t, c.do(cmdRead, 0, 1<<62, 512, nil), eINVAL, "read far past the end")
	expectErr(t, c.do(cmdRead, 0, ^uint64(0)-511, 1024, nil), eINVAL, "read with an offset that overflows")
	expectErr(t, c.do(cmdWrite, 0, 1<<20, 4096, fill(4096, 9)), eNOSPC, "write past the end")
	expectErr(t, c.do(cmdWriteZeroes, 0, 1<<20-4096, 8192, nil), eNOSPC, "write zeroes past the end")
	expectErr(t, c.do(cmdTrim, 0, 1<<20, 4096, nil), eINVAL, "trim past the end")
	c.mustOK(cmdWrite, 0, 1<<20-4096, 4096, fill(4096, 7))
	if got := c.read(1<<20-4096, 4096); !bytes.Equal(got, fill(4096, 7)) {
		t.Fatal("read after the errors returned the wrong data")
	}
	c.send(cmdDisc, 0, 0, 0, nil)
	if !c.closed() {
		t.Fatal("connection open after NBD_CMD_DISC")
	}
	v.checkJournal(t)
}

// READ and WRITE above the 32 MiB payload limit get EINVAL; a WRITE
// payload too large to skip closes the connection.
func TestOversizedRequests(t *testing.T) {
	m := newMem(128 << 20)
	addr := serveExports(t, nbd.Export{Name: "m", Backend: m})
	c := dial(t, addr)
	c.goExport("m")
	expectErr(t, c.do(cmdRead, 0, 0, nbd.MaxPayload+512, nil), eINVAL, "oversized read")
	expectErr(t, c.do(cmdWrite, 0, 0, nbd.MaxPayload+512, fill(nbd.MaxPayload+512, 1)), eINVAL, "oversized write")
	c.mustOK(cmdWrite, 0, 0, nbd.MaxPayload, fill(nbd.MaxPayload, 2))
	if got := c.read(nbd.MaxPayload-4096, 4096); !bytes.Equal(got, fill(4096, 2)) {
		t.Fatal("maximum-size write did not land")
	}
	// Large commands without a payload are fine.
	c.mustOK(cmdWriteZeroes, flagNoHole, 0, 96<<20, nil)
	c.mustOK(cmdTrim, 0, 0, 128<<20-512, nil)
	for _, call := range m.log() {
		if strings.HasPrefix(call, "write 0 3355") && call != "write 0 33554432" {
			t.Fatalf("oversized write reached the backend: %s", call)
		}
	}
	// 65 MiB: the server does not read that much to skip it.
	c.send(cmdWrite, 0, 0, 65<<20, nil)
	if !c.closed() {
		t.Fatal("connection still open after a 65 MiB write header")
	}
}

// A bad request magic closes that connection only; another connection,
// opened before, keeps working, and new ones are accepted.
func TestBadMagicClosesOnlyThatConnection(t *testing.T) {
	v := newVolume(t, 1<<20, nil)
	addr := serveExports(t, v.export("disk"))
	good, bad := dial(t, addr), dial(t, addr)
	good.goExport("disk")
	bad.goExport("disk")
	bad.mustOK(cmdWrite, 0, 0, 4096, fill(4096, 1))
	bad.write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 7))
	if !bad.closed() {
		t.Fatal("connection with a bad request magic is still open")
	}
	good.mustOK(cmdWrite, flagFUA, 4096, 4096, fill(4096, 2))
	if got := good.read(0, 8192); !bytes.Equal(got, append(fill(4096, 1), fill(4096, 2)...)) {
		t.Fatal("the other connection reads wrong data")
	}
	third := dial(t, addr)
	third.goExport("disk")
	third.mustOK(cmdFlush, 0, 0, 0, nil)
}

// A read-only export refuses writes, trims and zeroes with EPERM and
// still serves reads and flushes.
func TestReadOnlyExport(t *testing.T) {
	m := newMem(1 << 20)
	copy(m.data, "lifeboat")
	addr := serveExports(t, nbd.Export{Name: "ro", Backend: m, ReadOnly: true})
	c := dial(t, addr)
	_, flags := c.goExport("ro")
	if flags&tflagReadOnly == 0 || flags&(tflagSendTrim|tflagSendZero|tflagSendFUA) != 0 {
		t.Fatalf("transmission flags %#x for a read-only export", flags)
	}
	expectErr(t, c.do(cmdWrite, 0, 0, 4096, fill(4096, 1)), ePERM, "write")
	expectErr(t, c.do(cmdTrim, 0, 0, 4096, nil), ePERM, "trim")
	expectErr(t, c.do(cmdWriteZeroes, 0, 0, 4096, nil), ePERM, "write zeroes")
	if got := c.read(0, 512); string(got[:8]) != "lifeboat" {
		t.Fatalf("read %q", got[:8])
	}
	c.mustOK(cmdFlush, 0, 0, 0, nil)
	for _, call := range m.log() {
		if !strings.HasPrefix(call, "read") && !strings.HasPrefix(call, "flush") {
			t.Fatalf("backend saw %q on a read-only export", call)
		}
	}
}

// With structured replies, a READ is one OFFSET_DATA chunk with DONE and
// an error is an ERROR chunk with a message.
func TestStructuredReplies(t *testing.T) {
	v := newVolume(t, 1<<20, nil)
	addr := serveExports(t, v.export("disk"))
	c := dial(t, addr)
	c.negotiateStructured()
	_, flags := c.goExport("disk")
	if flags&tflagSendDF == 0 {
		t.Errorf("transmission flags %#x lack SEND_DF with structured replies", flags)
	}
	c.mustOK(cmdWrite, 0, 8192, 4096, fill(4096, 0x5a))
	if got := c.read(8192, 4096); !bytes.Equal(got, fill(4096, 0x5a)) {
		t.Fatal("structured read returned the wrong data")
	}
	if got := c.do(cmdRead, flagDF, 0, 12288, nil); got.chunk != chunkOffsetData || len(got.data) != 12288 {
		t.Fatalf("DF read: chunk %d with %d bytes", got.chunk, len(got.data))
	}
	r := c.do(cmdRead, 0, 1<<20, 512, nil)
	if r.chunk != chunkError || r.errno != eINVAL || !strings.Contains(r.msg, "beyond the end") {
		t.Fatalf("read past the end: chunk %d errno %d %q", r.chunk, r.errno, r.msg)
	}
	r = c.do(cmdBlockStatus, 0, 0, 4096, nil)
	if r.chunk != chunkError || r.errno != eINVAL {
		t.Fatalf("block status without a meta context: chunk %d errno %d", r.chunk, r.errno)
	}
	c.read(0, 512)
}

// base:allocation: listing, selecting and BLOCK_STATUS with and without
// REQ_ONE.
func TestBlockStatus(t *testing.T) {
	m := newMem(4 << 20)
	addr := serveExports(t, nbd.Export{Name: "m", Backend: m})
	c := dial(t, addr)
	if r := c.option(optSetMetaContext, metaData("m", "base:allocation")); r[0].typ != repErrInvalid {
		t.Fatalf("SET_META_CONTEXT before structured replies: %#x, want ERR_INVALID", r[0].typ)
	}
	c.negotiateStructured()
	for _, q := range [][]string{nil, {"base:"}, {"base:allocation"}, {"qemu:dirty-bitmap:x", "base:allocation"}} {
		r := c.option(optListMetaContext, metaData("m", q...))
		if len(r) != 2 || r[0].typ != repMetaContext || string(r[0].data[4:]) != "base:allocation" || r[1].typ != repAck {
			t.Fatalf("LIST_META_CONTEXT %q: %+v", q, r)
		}
	}
	if r := c.option(optListMetaContext, metaData("m", "x-other:thing")); len(r) != 1 || r[0].typ != repAck {
		t.Fatalf("LIST_META_CONTEXT of another namespace: %+v", r)
	}
	if r := c.option(optSetMetaContext, metaData("nope", "base:allocation")); r[0].typ != repErrUnknown {
		t.Fatalf("SET_META_CONTEXT on an unknown export: %#x", r[0].typ)
	}
	r := c.option(optSetMetaContext, metaData("m", "base:allocation"))
	if len(r) != 2 || r[0].typ != repMetaContext || r[1].typ != repAck {
		t.Fatalf("SET_META_CONTEXT: %+v", r)
	}
	id := binary.BigEndian.Uint32(r[0].data)
	c.goExport("m")
	c.mustOK(cmdWrite, 0, 0, 4<<20, fill(4<<20, 1))
	c.mustOK(cmdTrim, 0, 1<<20, 1<<20, nil)
	c.mustOK(cmdWriteZeroes, 0, 3<<20, 1<<20, nil) // without NO_HOLE: a trim
	c.mustOK(cmdWriteZeroes, flagNoHole, 2<<20, 4096, nil)
	st := c.do(cmdBlockStatus, 0, 0, 4<<20, nil)
	want := [][2]uint32{{1 << 20, 0}, {1 << 20, 3}, {1 << 20, 0}, {1 << 20, 3}}
	if st.chunk != chunkBlockStatus || st.context != id || !slices.Equal(st.desc, want) {
		t.Fatalf("block status: chunk %d context %d (want %d) %v, want %v", st.chunk, st.context, id, st.desc, want)
	}
	st = c.do(cmdBlockStatus, flagReqOne, 1<<20+4096, 8192, nil)
	if !slices.Equal(st.desc, [][2]uint32{{8192, 3}}) {
		t.Fatalf("block status REQ_ONE: %v", st.desc)
	}
	if got := c.read(1<<20, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("trimmed range does not read as zeros")
	}
	wantCalls := []string{"trim 1048576 1048576", "trim 3145728 1048576", "zero 2097152 4096"}
	if log := m.log(); !slices.Equal(log[1:4], wantCalls) {
		t.Fatalf("backend calls %q, want %q", log[1:4], wantCalls)
	}
}

// Option haggling: LIST, INFO, unknown options and exports, ABORT.
func TestOptions(t *testing.T) {
	a, b := newMem(1<<20), newMem(2<<20)
	addr := serveExports(t, nbd.Export{Name: "a", Description: "first", Backend: a}, nbd.Export{Name: "b", Backend: b})
	c := dial(t, addr)
	r := c.option(optList, nil)
	if len(r) != 3 || r[0].typ != repServer || r[1].typ != repServer || r[2].typ != repAck {
		t.Fatalf("LIST: %+v", r)
	}
	if n := binary.BigEndian.Uint32(r[0].data); string(r[0].data[4:4+n]) != "a" || string(r[0].data[4+n:]) != "first" {
		t.Fatalf("LIST entry %q", r[0].data)
	}
	if r := c.option(optList, []byte{1}); r[0].typ != repErrInvalid {
		t.Fatalf("LIST with data: %#x", r[0].typ)
	}
	for _, opt := range []uint32{99, optStartTLS, 4} {
		if r := c.option(opt, []byte("junk")); r[0].typ != repErrUnsup {
			t.Fatalf("option %d: %#x, want ERR_UNSUP", opt, r[0].typ)
		}
	}
	if r := c.option(optInfo, infoData("zzz")); r[0].typ != repErrUnknown {
		t.Fatalf("INFO on an unknown export: %#x", r[0].typ)
	}
	if r := c.option(optInfo, infoData("")); r[0].typ != repErrUnknown || !strings.Contains(string(r[0].data), "nbdinfo --list") {
		t.Fatalf("INFO on the default export with two exports: %#x %q", r[0].typ, r[0].data)
	}
	if r := c.option(optInfo, []byte{0, 0, 0, 9, 'a'}); r[0].typ != repErrInvalid {
		t.Fatalf("malformed INFO: %#x", r[0].typ)
	}
	r = c.option(optInfo, infoData("a", infoName, infoDescr, infoBlockSize))
	got := map[uint16][]byte{}
	for _, x := range r[:len(r)-1] {
		got[binary.BigEndian.Uint16(x.data)] = x.data[2:]
	}
	if string(got[infoName]) != "a" || string(got[infoDescr]) != "first" || len(got[infoExport]) != 10 ||
		!bytes.Equal(got[infoBlockSize], []byte{0, 0, 2, 0, 0, 0, 16, 0, 2, 0, 0, 0}) || r[len(r)-1].typ != repAck {
		t.Fatalf("INFO replies %v", got)
	}
	size, _ := c.goExport("b")
	if size != 2<<20 {
		t.Fatalf("GO b: size %d", size)
	}
	c.mustOK(cmdFlush, 0, 0, 0, nil)

	// ABORT is acknowledged, then the server closes.
	d := dial(t, addr)
	if r := d.option(optAbort, nil); r[0].typ != repAck {
		t.Fatalf("ABORT: %#x", r[0].typ)
	}
	if !d.closed() {
		t.Fatal("connection open after ABORT")
	}
}

// NBD_OPT_EXPORT_NAME: size and flags, with and without the 124 zero
// bytes; an unknown name closes the connection.
func TestExportName(t *testing.T) {
	m := newMem(1 << 20)
	addr := serveExports(t, nbd.Export{Name: "m", Backend: m})
	for _, noZeroes := range []bool{true, false} {
		c := dial(t, addr) // negotiated NO_ZEROES...
		if !noZeroes {
			c = dialFlags(t, addr, 1) // ...or not
		}
		c.sendOption(optExportName, []byte("")) // the only export is the default
		var b [10]byte
		c.readFull(b[:])
		if binary.BigEndian.Uint64(b[:]) != 1<<20 {
			t.Fatalf("size %d", binary.BigEndian.Uint64(b[:]))
		}
		if !noZeroes {
			var z [124]byte
			c.readFull(z[:])
			if z != [124]byte{} {
				t.Fatal("padding is not zero")
			}
		}
		c.mustOK(cmdWrite, 0, 0, 512, fill(512, 3))
	}
	c := dial(t, addr)
	c.sendOption(optExportName, []byte("missing"))
	if !c.closed() {
		t.Fatal("connection open after EXPORT_NAME of an unknown export")
	}
	c = dialFlags(t, addr, 1<<5)
	if !c.closed() {
		t.Fatal("connection open after unknown client flags")
	}
}

// dialFlags is dial with other client flags.
func dialFlags(t *testing.T, addr string, flags uint32) *client {
	t.Helper()
	c := dialRaw(t, addr)
	c.write(binary.BigEndian.AppendUint32(nil, flags))
	return c
}
