package backendtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/internal/testenv"
	"lifeboat/nbd"
)

// nbdSuite is a backend served on 127.0.0.1 and the model of its content.
type nbdSuite struct {
	b     Backend
	uri   string
	dir   string
	model []byte
	reads int
}

// RunNBD serves a backend made by f with nbd.Server on 127.0.0.1 and
// checks it with real clients, each step against the model of what the
// export must hold:
//   - qemu-io: pattern writes (4 KiB-aligned, 512-aligned, byte-unaligned,
//     FUA, at the end of the device), discard and write -z (with and
//     without unmap) that must read as zeros, flush; every change is read
//     back with read -P;
//   - qemu-img compare of the export with a file holding the model;
//   - nbdcopy of a file with random, patterned and zero MiBs into the
//     export over 4 connections and back out, sha256 equal;
//   - fio randwrite with 512 B to 64 KiB blocks verified with crc32c in
//     one quarter of the export, and the rest unchanged.
//
// After each step the whole export is read with nbdcopy and compared with
// the model; at the end the backend is read directly too.
func RunNBD(t *testing.T, f Factory) {
	testenv.Tools(t, "qemu-io", "qemu-img", "nbdcopy", "fio")
	initial := Initial(Size, 1)
	b := newBackend(t, f, initial)
	s := &nbdSuite{b: b, uri: "nbd://" + serve(t, b) + "/disk", dir: t.TempDir(), model: bytes.Clone(initial)}
	s.check(t, "export before any write")
	for _, step := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"QemuIO", s.qemuIO},
		{"QemuImgCompare", s.qemuImgCompare},
		{"Nbdcopy", s.nbdcopy},
		{"FioVerify", s.fio},
	} {
		if !t.Run(step.name, step.fn) {
			return // the model is no longer known
		}
	}
	checkBackend(t, "after the NBD clients", b, s.model)
}

// serve starts an nbd.Server with b as export "disk" on 127.0.0.1:0 and
// stops it when the test ends.
func serve(t *testing.T, b Backend) string {
	t.Helper()
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "disk", Backend: b}}
	return Serve(t, srv)
}

// Serve serves srv on 127.0.0.1:0 (its log discarded unless it has a
// Logger) and returns the address; the server is shut down, and must
// return ErrServerClosed, when the test ends.
func Serve(t testing.TB, srv *nbd.Server) string {
	t.Helper()
	if srv.Logger == nil {
		srv.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, nbd.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String()
}

// readExport copies the whole export to a new file with nbdcopy and
// returns its content.
func (s *nbdSuite) readExport(t *testing.T) []byte {
	t.Helper()
	s.reads++
	path := filepath.Join(s.dir, fmt.Sprintf("read%d.img", s.reads))
	run(t, "nbdcopy", s.uri, path)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	return got
}

// check reads the whole export and compares it with the model.
func (s *nbdSuite) check(t *testing.T, what string) {
	t.Helper()
	checkEqual(t, what+" (read with nbdcopy)", s.readExport(t), s.model)
}

// qemuOp is one qemu-io command and what it does to the model.
type qemuOp struct {
	cmd      string // write -P, write -f -P, write -z, write -z -u, discard
	off, n   int64
	pat      byte // for writes with -P
	readBack byte // what read -P expects afterwards
}

func (s *nbdSuite) qemuIO(t *testing.T) {
	const M = 1 << 20
	ops := []qemuOp{
		{cmd: "write -P", off: 0, n: M, pat: 0x11},                       // aligned, first MiB
		{cmd: "write -P", off: 10*4096 + 512, n: 3 * 512, pat: 0x22},     // inside one 4 KiB block
		{cmd: "write -P", off: 2*M + 4096 - 1024, n: 9 * 512, pat: 0x23}, // across 4 KiB blocks
		{cmd: "write -P", off: 3*M + 1, n: 10000, pat: 0x33},             // byte-unaligned
		{cmd: "write -P", off: 5*M + 100, n: 300001, pat: 0x34},          // byte-unaligned, long
		{cmd: "write -P", off: Size - 4096 - 100, n: 4196, pat: 0x44},    // up to the end
		{cmd: "write -f -P", off: 7*M + 4096, n: 64 << 10, pat: 0x55},    // FUA
		{cmd: "discard", off: 8*M + 512, n: 9*4096 + 1024},               // partial blocks at both ends
		{cmd: "discard", off: 12 * M, n: 2 * M},                          // whole blocks
		{cmd: "discard", off: 0 + 4096, n: 4096},                         // inside the first write
		{cmd: "write -z", off: 20*M + 1536, n: 137 * 512},                // partial blocks
		{cmd: "write -z -u", off: 24*M + 512, n: M},                      // unmap allowed
		{cmd: "write -z", off: 5*M + 4096, n: 8192},                      // inside an unaligned write
		{cmd: "write -P", off: 12*M + 4096 + 7, n: 5000, pat: 0x66},      // into a discarded range
		{cmd: "write -P", off: Size - 512, n: 512, pat: 0x77},            // last sector
		{cmd: "discard", off: Size - 2*M, n: 2*M - 1024},                 // near the end, partial last block
		{cmd: "write -z", off: Size - 4096 - 1024, n: 1024 + 4096 - 512}, // ends before the last sector
	}
	args := []string{"-f", "raw", s.uri}
	for _, op := range ops {
		switch {
		case strings.HasPrefix(op.cmd, "write -z"), op.cmd == "discard":
			clear(s.model[op.off : op.off+op.n])
			args = append(args, "-c", fmt.Sprintf("%s %d %d", op.cmd, op.off, op.n))
		default:
			for i := op.off; i < op.off+op.n; i++ {
				s.model[i] = op.pat
			}
			op.readBack = op.pat
			args = append(args, "-c", fmt.Sprintf("%s %s %d %d", op.cmd, pattern(op.pat), op.off, op.n))
		}
		args = append(args, "-c", fmt.Sprintf("read -P %s %d %d", pattern(op.readBack), op.off, op.n))
	}
	args = append(args, "-c", "flush")
	out := run(t, "qemu-io", args...)
	for _, bad := range []string{"fail", "error", "Pattern verification"} {
		if strings.Contains(strings.ToLower(out), strings.ToLower(bad)) {
			t.Fatalf("qemu-io reported %q:\n%s", bad, out)
		}
	}
	if got, want := strings.Count(out, "read "), len(ops); got != want {
		t.Fatalf("qemu-io printed %d reads, want %d:\n%s", got, want, out)
	}
	s.check(t, "after qemu-io")
}

// qemuImgCompare compares the export with a file holding the model; then
// it changes one byte of the file to see that compare notices.
func (s *nbdSuite) qemuImgCompare(t *testing.T) {
	path := filepath.Join(s.dir, "model.img")
	writeSparse(t, path, s.model)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", path, s.uri)
	off := int64(len(s.model)) / 3 &^ 511
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{s.model[off] ^ 0xff}, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := tryRun("qemu-img", "compare", "-f", "raw", "-F", "raw", path, s.uri)
	if err == nil || !strings.Contains(out, fmt.Sprint(off)) {
		t.Fatalf("qemu-img compare with one byte changed at %d: %v, want a difference reported there:\n%s", off, err, out)
	}
}

// nbdcopy copies a file with random, patterned and zero MiBs into the
// export and back out again.
func (s *nbdSuite) nbdcopy(t *testing.T) {
	src, back := filepath.Join(s.dir, "src.img"), filepath.Join(s.dir, "back.img")
	content := Initial(Size, 2)
	writeSparse(t, src, content)
	run(t, "nbdcopy", "--flush", "--connections=4", src, s.uri)
	run(t, "nbdcopy", s.uri, back)
	if got, want := sha(t, back), sha(t, src); got != want {
		t.Errorf("sha256 of the copy back %x, of the source %x", got, want)
	}
	s.model = content
	s.check(t, "after nbdcopy")
}

// fio writes random blocks of 512 B to 64 KiB in [32 MiB, 48 MiB) and
// verifies them; the rest of the export must be unchanged, and the model
// takes fio's data from the export.
func (s *nbdSuite) fio(t *testing.T) {
	const off, size = 32 << 20, 16 << 20
	FioVerify(t, s.uri, size, "--bsrange=512-64k", "--iodepth=16", fmt.Sprintf("--offset=%d", off))
	got := s.readExport(t)
	if bytes.Equal(got[off:off+size], s.model[off:off+size]) {
		t.Fatalf("fio's range [%d, %d) still holds what nbdcopy wrote", off, off+size)
	}
	copy(s.model[off:off+size], got[off:off+size])
	checkEqual(t, "after fio (read with nbdcopy)", got, s.model)
}

// FioVerify runs fio's nbd engine on uri: random writes over size bytes
// (from --offset if args give one) verified with crc32c; it fails the test
// unless fio reports no error and wrote and verified exactly size bytes.
func FioVerify(t testing.TB, uri string, size int64, args ...string) {
	t.Helper()
	out := run(t, "fio", append([]string{"--name=verify", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite",
		fmt.Sprintf("--size=%d", size), "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
		"--output-format=json"}, args...)...)
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	i := strings.Index(out, "{")
	if i < 0 {
		t.Fatalf("fio printed no JSON:\n%s", out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio json output: %v\n%s", err, out)
	}
	if j := res.Jobs[0]; j.Error != 0 || j.Write.IOBytes != size || j.Read.IOBytes != size {
		t.Fatalf("fio: error %d, wrote %d and verified %d bytes, want 0, %d, %d\n%s",
			j.Error, j.Write.IOBytes, j.Read.IOBytes, size, size, out)
	}
}
