package nbd_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/internal/backendtest"
	"lifeboat/nbd"
)

// nbdinfo --json reports what the server advertises: flush, trim, zero,
// FUA, multi-conn, the base:allocation context and the block sizes.
func TestNbdinfoReportsCapabilities(t *testing.T) {
	requireTool(t, "nbdinfo")
	v := newVolume(t, 64<<20, nil)
	ro := newVolume(t, 1<<20, nil)
	roExport := ro.export("ro")
	roExport.ReadOnly = true
	addr := serveExports(t, v.export("disk"), roExport)
	var info struct {
		Protocol string           `json:"protocol"`
		Exports  []map[string]any `json:"exports"`
	}
	out := run(t, "nbdinfo", "--json", uri(addr, "disk"))
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" {
		t.Errorf("protocol = %q, want newstyle-fixed", info.Protocol)
	}
	e := info.Exports[0]
	want := map[string]any{
		"export-name": "disk", "export-size": float64(64 << 20), "description": "test volume disk",
		"can_flush": true, "can_trim": true, "can_zero": true, "can_fua": true, "can_multi_conn": true,
		"can_df": true, "is_read_only": false,
		"block_size_minimum": float64(512), "block_size_preferred": float64(4096), "block_size_maximum": float64(32 << 20),
	}
	for k, w := range want {
		if e[k] != w {
			t.Errorf("%s = %v, want %v", k, e[k], w)
		}
	}
	if ctx, _ := e["contexts"].([]any); len(ctx) != 1 || ctx[0] != "base:allocation" {
		t.Errorf("contexts = %v, want [base:allocation]", e["contexts"])
	}
	if t.Failed() {
		t.Log(out)
	}

	// --list shows every export; the read-only one says so.
	out = run(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	info.Exports = nil
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	got := map[string]map[string]any{}
	for _, e := range info.Exports {
		got[e["export-name"].(string)] = e
	}
	if len(got) != 2 || got["disk"] == nil || got["ro"] == nil {
		t.Fatalf("exports listed: %v\n%s", got, out)
	}
	if got["ro"]["is_read_only"] != true || got["ro"]["can_trim"] != false || got["disk"]["is_read_only"] != false {
		t.Errorf("read-only flags wrong:\n%s", out)
	}
}

// The empty export name selects the default export.
func TestDefaultExport(t *testing.T) {
	requireTool(t, "nbdinfo")
	a, b := newVolume(t, 1<<20, nil), newVolume(t, 2<<20, nil)
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{a.export("a"), b.export("b")}
	srv.DefaultExport = "b"
	addr := serve(t, srv)
	if out := strings.TrimSpace(run(t, "nbdinfo", "--size", "nbd://"+addr)); out != "2097152" {
		t.Fatalf("size of the default export = %s, want 2097152", out)
	}
}

// nbdinfo --map shows holes where the client trimmed, and data elsewhere.
func TestNbdinfoMapShowsHoleAfterTrim(t *testing.T) {
	requireTool(t, "nbdinfo", "qemu-io")
	v := newVolume(t, 8<<20, nil)
	addr := serveExports(t, v.export("disk"))
	run(t, "qemu-io", "-f", "raw", uri(addr, "disk"), "-c", "write -P 0x55 0 4M", "-c", "discard 1M 1M", "-c", "flush")
	out := run(t, "nbdinfo", "--map", "--json", uri(addr, "disk"))
	var extents []struct {
		Offset, Length int64
		Type           int
		Description    string
	}
	if err := json.Unmarshal([]byte(out), &extents); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	typeAt := func(off int64) int {
		for _, e := range extents {
			if e.Offset <= off && off < e.Offset+e.Length {
				return e.Type
			}
		}
		t.Fatalf("offset %d not covered by the map:\n%s", off, out)
		return -1
	}
	for _, c := range []struct {
		off  int64
		want int
	}{{0, 0}, {1<<20 - 512, 0}, {1 << 20, 3}, {2<<20 - 512, 3}, {2 << 20, 0}, {4<<20 - 512, 0}, {4 << 20, 3}, {8<<20 - 512, 3}} {
		if got := typeAt(c.off); got != c.want {
			t.Errorf("type at %d = %d, want %d (0 data, 3 hole,zero)\n%s", c.off, got, c.want, out)
		}
	}
	v.checkJournal(t)
}

// qemu-io: writes and reads with patterns, FUA writes, discard, write
// zeroes with and without unmap, flush.
func TestQemuIO(t *testing.T) {
	requireTool(t, "qemu-io")
	v := newVolume(t, 16<<20, nil)
	addr := serveExports(t, v.export("disk"))
	out := run(t, "qemu-io", "-f", "raw", uri(addr, "disk"),
		"-c", "write -P 0xab 0 1M",
		"-c", "read -P 0xab 0 1M",
		"-c", "write -P 0xcd 1M 3M",
		"-c", "discard 1M 1M",
		"-c", "read -P 0 1M 1M",
		"-c", "write -z 2M 1M",
		"-c", "read -P 0 2M 1M",
		"-c", "write -z -u 3M 512k",
		"-c", "read -P 0 3M 512k",
		"-c", "read -P 0xcd 3584k 512k",
		"-c", "write -f -P 0x11 4M 64k",
		"-c", "read -P 0x11 4M 64k",
		"-c", "write -P 0x22 5M 512",
		"-c", "read -P 0x22 5M 512",
		"-c", "aio_write -P 0x33 6M 256k",
		"-c", "aio_write -P 0x44 7M 256k",
		"-c", "aio_flush",
		"-c", "read -P 0x33 6M 256k",
		"-c", "read -P 0x44 7M 256k",
		"-c", "flush",
	)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	v.checkJournal(t)
}

// qemu-img convert of a 256 MiB image (random, patterned and zero
// regions) into the export, then qemu-img compare; the journal replays to
// the same bytes.
func TestQemuImgConvertAndCompare(t *testing.T) {
	requireTool(t, "qemu-img")
	const size = 256 << 20
	src := filepath.Join(t.TempDir(), "src.img")
	writeImage(t, src, size, 1)
	v := newVolume(t, size, nil)
	addr := serveExports(t, v.export("disk"))
	run(t, "qemu-img", "convert", "-n", "-W", "-f", "raw", "-O", "raw", src, uri(addr, "disk"))
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri(addr, "disk"))
	v.checkJournal(t)
}

// nbdcopy --flush into the export over several connections, then back out
// again: the bytes match and the journal replays to the backing file.
func TestNbdcopy(t *testing.T) {
	requireTool(t, "nbdcopy")
	const size = 64 << 20
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
	writeImage(t, src, size, 2)
	// Start from different content so zero regions must really be zeroed.
	v := newVolume(t, size, func(f *os.File) {
		f.WriteAt([]byte(strings.Repeat("x", 1<<20)), 0)
		f.WriteAt([]byte(strings.Repeat("y", 1<<20)), size-1<<20)
	})
	addr := serveExports(t, v.export("disk"))
	run(t, "nbdcopy", "--flush", "--connections=4", src, uri(addr, "disk"))
	run(t, "nbdcopy", uri(addr, "disk"), back)
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(back)
	if i := firstDiff(a, b); i >= 0 {
		t.Fatalf("copy differs from the source at byte %d", i)
	}
	v.checkJournal(t)
}

// fio's nbd engine: 4 KiB random writes at queue depth 16, verified with
// crc32c.
func TestFioRandwriteVerify(t *testing.T) {
	requireTool(t, "fio")
	v := newVolume(t, 64<<20, nil)
	addr := serveExports(t, v.export("disk"))
	backendtest.FioVerify(t, uri(addr, "disk"), 64<<20, "--bs=4k", "--iodepth=16")
	v.checkJournal(t)
}
