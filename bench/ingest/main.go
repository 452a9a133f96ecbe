// Command ingest drives a running `lifeboat server` the way a shipper does,
// to measure the process server end to end: TLS, zstd decode, checksums,
// spool write and fsync, apply to the target and commit, with receive and
// apply overlapping in their own goroutines as they do in production.
//
// For each run it first builds the segments (1 MiB WRITE records, 32 MiB of
// volume data per segment, the journal's own writer) and compresses them with
// the agent's default zstd level, then ships them back to back (one request
// at a time, as a shipper does) and polls the server until the replica has
// committed the last seq. Nothing is encoded during the timed part; the
// client's TLS and HTTP work remain on the same cores. Each run goes to a
// new volume (a fresh, sparse replica), or with -overwrite every run
// overwrites one volume that an untimed first pass filled.
//
// Output: one line per run,
//
//	run N kind K mode fresh|overwrite segments S raw_bytes R wire_bytes W volume_bytes V recv_s X applied_s Y server_cpu_s C client_cpu_s D
//
// recv_s ends at the last 200 answer (everything durable in the spool),
// applied_s when GET /v1/volumes/{id} reports the last seq applied;
// server_cpu_s is the CPU time the server process used meanwhile (with
// --server-pid), client_cpu_s this program's. The fill pass of -overwrite
// prints the same line starting with "fill".
//
// Usage (bench/replication.sh apply runs it):
//
//	go run ./bench/ingest --server https://127.0.0.1:PORT --cert C/a.crt --key C/a.key --ca C/ca.crt \
//	    --kind incompressible --segments 32 --runs 5
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"

	"lifeboat/hrl"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

const (
	segData   = 32 << 20 // volume bytes per segment
	recordLen = 1 << 20
	blockSize = 4096
)

// The protocol's headers (pipeline/protocol.go; unexported there).
const (
	hdrVolumeName  = "X-Lifeboat-Volume-Name"
	hdrVolumeSize  = "X-Lifeboat-Volume-Size"
	hdrBlockSize   = "X-Lifeboat-Block-Size"
	hdrGeneration  = "X-Lifeboat-Generation"
	hdrFirstSeq    = "X-Lifeboat-First-Seq"
	hdrLastSeq     = "X-Lifeboat-Last-Seq"
	hdrSegmentSize = "X-Lifeboat-Segment-Size"
	hdrSegmentSum  = "X-Lifeboat-Segment-Sum"
)

type segment struct {
	raw, wire   []byte
	first, last uint64
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		os.Exit(1)
	}
}

func run() error {
	server := flag.String("server", "", "process server URL, https://127.0.0.1:PORT")
	cert := flag.String("cert", "", "agent certificate")
	key := flag.String("key", "", "agent key")
	ca := flag.String("ca", "", "site CA certificate")
	kind := flag.String("kind", "incompressible", "incompressible or typical (half zero blocks, half text)")
	nseg := flag.Int("segments", 32, "segments of 32 MiB of volume data per run")
	runs := flag.Int("runs", 5, "timed runs")
	overwrite := flag.Bool("overwrite", false, "one volume for all runs: an untimed first pass fills it, every run overwrites it")
	tmp := flag.String("tmp", os.TempDir(), "directory for building the segments")
	serverPID := flag.Int("server-pid", 0, "the server's PID, to report the CPU time it used in each run")
	flag.Parse()
	if *server == "" || *cert == "" || *key == "" || *ca == "" {
		return errors.New("--server, --cert, --key and --ca are required")
	}
	conf, err := pki.ClientTLS(*cert, *key, *ca)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true,
		MaxIdleConnsPerHost: 4, ResponseHeaderTimeout: 5 * time.Minute}}

	size := int64(*nseg) * segData
	ctx := context.Background()
	var id uuid.UUID
	var name string
	seq := uint64(1)
	first := 1
	if *overwrite {
		first = 0 // run 0 fills the volume, untimed
	}
	for r := first; r <= *runs; r++ {
		fresh := !*overwrite || r == first
		if fresh {
			// A new volume: a new id (it is in every segment header).
			id, seq = uuid.New(), 1
			name = fmt.Sprintf("ingest-%s-%d", *kind, r)
		}
		segs, err := build(*tmp, id, *kind, *nseg, seq, fresh, uint64(r))
		if err != nil {
			return err
		}
		seq = segs[len(segs)-1].last + 1
		if fresh {
			// Warm-up: a one-record segment opens the replica (not timed).
			if err := send(ctx, client, *server, id, name, size, segs[0]); err != nil {
				return fmt.Errorf("run %d: warm-up: %w", r, err)
			}
			if err := waitApplied(ctx, client, *server, id, segs[0].last); err != nil {
				return err
			}
			segs = segs[1:]
		}
		var raw, wire int64
		srv0, cli0 := cpuOf(*serverPID), selfCPU()
		t0 := time.Now()
		for _, s := range segs {
			if err := send(ctx, client, *server, id, name, size, s); err != nil {
				return fmt.Errorf("run %d: %w", r, err)
			}
			raw += int64(len(s.raw))
			wire += int64(len(s.wire))
		}
		recv := time.Since(t0)
		if err := waitApplied(ctx, client, *server, id, segs[len(segs)-1].last); err != nil {
			return err
		}
		applied := time.Since(t0)
		srvCPU, cliCPU := cpuOf(*serverPID)-srv0, selfCPU()-cli0
		label := "run"
		if r == 0 {
			label = "fill"
		}
		mode := "fresh"
		if *overwrite {
			mode = "overwrite"
		}
		fmt.Printf("%s %d kind %s mode %s segments %d raw_bytes %d wire_bytes %d volume_bytes %d recv_s %.4f applied_s %.4f server_cpu_s %.2f client_cpu_s %.2f\n",
			label, r, *kind, mode, len(segs), raw, wire, size, recv.Seconds(), applied.Seconds(), srvCPU.Seconds(), cliCPU.Seconds())
	}
	return nil
}

// build journals nseg segments covering the volume, seqs from seq on
// (after a one-record warm-up segment when warm), with the journal writer,
// and compresses them as the agent does.
func build(tmp string, id uuid.UUID, kind string, nseg int, seq uint64, warm bool, seed uint64) ([]segment, error) {
	dir, err := os.MkdirTemp(tmp, "ingest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	gen := newData(kind, id, seed)
	var segs []segment
	start := 0
	if warm {
		start = -1
	}
	for i := start; i < nseg; i++ {
		w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{VolumeID: id, Generation: 1, FirstSeq: seq, BlockSize: blockSize}, hrl.WriterConfig{})
		if err != nil {
			return nil, err
		}
		if i < 0 {
			if _, _, err := w.AppendData(hrl.TypeWrite, 0, gen(blockSize)); err != nil {
				return nil, err
			}
		} else {
			for off := int64(i) * segData; off < int64(i+1)*segData; off += recordLen {
				if _, _, err := w.AppendData(hrl.TypeWrite, uint64(off), gen(recordLen)); err != nil {
					return nil, err
				}
			}
		}
		info, err := w.Seal()
		if err != nil {
			return nil, err
		}
		raw, err := os.ReadFile(info.Path)
		if err != nil {
			return nil, err
		}
		os.Remove(info.Path)
		segs = append(segs, segment{raw: raw, wire: enc.EncodeAll(raw, nil), first: info.FirstSeq, last: info.LastSeq})
		seq = info.LastSeq + 1
	}
	return segs, nil
}

// newData returns a generator of volume content: random bytes
// (incompressible) or, for "typical", 4 KiB blocks that are zero or
// text-like with equal probability (as pipeline's BenchmarkReceive/Apply).
func newData(kind string, id uuid.UUID, run uint64) func(n int) []byte {
	var seed [32]byte
	copy(seed[:], id[:])
	binary.LittleEndian.PutUint64(seed[16:], run)
	rng := rand.New(rand.NewChaCha8(seed))
	words := strings.Fields("the quick brown fox jumps over the lazy dog replication journal segment block volume recovery point")
	var p []byte
	return func(n int) []byte {
		b := make([]byte, n)
		if kind == "incompressible" {
			for i := 0; i < n; i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8 && i+j < n; j++ {
					b[i+j] = byte(v >> (8 * j))
				}
			}
			return b
		}
		for blk := 0; blk < n; blk += blockSize {
			if rng.IntN(2) == 0 {
				continue // zero block
			}
			p = p[:0]
			for len(p) < blockSize {
				p = append(p, words[rng.IntN(len(words))]...)
				p = append(p, ' ')
			}
			copy(b[blk:blk+blockSize], p[:blockSize])
		}
		return b
	}
}

// cpuOf returns the user+system CPU time of process pid so far (0 when
// pid is 0 or unreadable), from /proc/PID/stat in clock ticks of 10 ms.
func cpuOf(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// selfCPU returns this process's user+system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func volumeURL(server string, id uuid.UUID) string {
	return strings.TrimRight(server, "/") + "/v1/volumes/" + id.String()
}

func send(ctx context.Context, client *http.Client, server string, id uuid.UUID, name string, size int64, s segment) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, volumeURL(server, id)+"/segments", bytes.NewReader(s.wire))
	if err != nil {
		return err
	}
	h := req.Header
	h.Set("Content-Type", "application/x-lifeboat-segment")
	h.Set("Content-Encoding", "zstd")
	h.Set(hdrVolumeName, name)
	h.Set(hdrVolumeSize, strconv.FormatInt(size, 10))
	h.Set(hdrBlockSize, strconv.Itoa(blockSize))
	h.Set(hdrGeneration, "1")
	h.Set(hdrFirstSeq, strconv.FormatUint(s.first, 10))
	h.Set(hdrLastSeq, strconv.FormatUint(s.last, 10))
	h.Set(hdrSegmentSize, strconv.Itoa(len(s.raw)))
	h.Set(hdrSegmentSum, fmt.Sprintf("%016x", xxhash.Sum64(s.raw)))
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("segment %d..%d: %s: %s", s.first, s.last, resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

// waitApplied polls the volume's status every 5 ms until seq is applied.
func waitApplied(ctx context.Context, client *http.Client, server string, id uuid.UUID, seq uint64) error {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, volumeURL(server, id), nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		var st pipeline.VolumeStatus
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("volume status: %w", err)
		}
		if st.ApplyError != "" {
			return fmt.Errorf("apply error: %s", st.ApplyError)
		}
		if st.AppliedSeq >= seq {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("seq %d not applied after 5 minutes", seq)
}
