// Command azureinit measures an initial replication of a volume into the
// Azure page blob target (targets/azure) on a running Azurite, against a
// plain azblob loop that uploads the same bytes with the same parallelism.
//
// The source is a deterministic volume (1 GiB by default) of which exactly
// half the bytes are zero: per 1 MiB region either zeros (7/16 of the
// regions) or random data (9/16), and inside the data regions as many
// 64 KiB zero holes as there are regions in the volume, at random 64 KiB
// slots. The non-zero data is therefore cut into runs of 64 KiB to several
// MiB, and coalescing matters.
//
// Kinds of run, each on a new container (-kinds, comma separated, in order):
//
//	lifeboat   azure.New + Open (creates the blob) and the replication the
//	           process server does for a resync: the agent skips zero
//	           blocks, so the extents are the non-zero runs cut at the
//	           target's MaxExtent; they are batched into Apply calls of at
//	           most -segment bytes of data (one journal segment), each
//	           followed by Commit with an increasing seq; then CreatePoint
//	           (the "resync complete" tag). Timed from Open to the point.
//	xts        the same with Options.Cipher (AES-256-XTS, random key).
//	lifeboatz  the same as lifeboat, plus ZERO extents for the zero ranges,
//	           as the agent's journal really carries them (zero blocks of a
//	           resync chunk become ZERO records, holes trimmed ZERO records;
//	           the target sends them as Clear Pages).
//	xtsz       lifeboatz with the cipher.
//	loop       pageblob.Create of the volume's size, then UploadPages of
//	           exactly the non-zero runs cut at 4 MiB, -parallel goroutines
//	           behind a semaphore, no barrier; timed from Create to the last
//	           answer.
//	loopbatch  the loop with the lifeboat run's segment barrier: the calls
//	           of one segment are sent -parallel at a time, and the next
//	           segment starts when all of them have answered (no Commit).
//	looplease  the loop holding a blob lease and sending its id with every
//	           Put Page, as an open replica does (no barrier).
//
// Output: one line per run in `go test -bench` form, so bench/medians.awk
// reads it:
//
//	BenchmarkAzureInit/KIND/P=8/LABEL 1 SECONDS s MBPS MB/s CPU client-cpu-s ACPU azurite-cpu-s ...
//
// MB/s is non-zero volume data (decimal MB) over the timed seconds; the
// phase metrics of the lifeboat kinds (open-s, apply-s, commit-s, point-s)
// add up to about the total. With -verify the blob (or, encrypted, the
// point through the target's reader) is read back after the timed part and
// its sha256 compared with the source's; a mismatch is fatal.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/lease"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/service"
	"github.com/google/uuid"

	"lifeboat/hrl"
	"lifeboat/targets"
	"lifeboat/targets/azure"
)

const (
	region = 1 << 20
	slot   = 64 << 10
)

var (
	endpoint   = flag.String("endpoint", "", "blob service URL of the account, e.g. http://127.0.0.1:10000/devstoreaccount1")
	account    = flag.String("account", azure.DevAccount, "storage account")
	key        = flag.String("key", azure.DevKey, "account key (the emulator's well-known key by default)")
	sizeMiB    = flag.Int64("size-mib", 1024, "volume size in MiB (a multiple of 16)")
	seed       = flag.Uint64("seed", 5, "seed of the volume's layout and data")
	parallel   = flag.Int("parallel", azure.DefaultParallel, "requests in flight: Options.Parallel and the loop's semaphore")
	segment    = flag.Int64("segment", 32<<20, "most data bytes per Apply (one journal segment)")
	kinds      = flag.String("kinds", "lifeboat,loop,xts", "runs to do, in order: lifeboat, xts, lifeboatz, xtsz, loop, loopbatch, looplease")
	label      = flag.String("label", "", "extra name element of the output lines (e.g. the persistence mode)")
	verify     = flag.Bool("verify", false, "read every replica back after its run and compare sha256 with the source")
	azuritePID = flag.Int("azurite-pid", 0, "Azurite's pid: report its CPU time during each run")
	cpuprofile = flag.String("cpuprofile", "", "write a CPU profile of the timed part of the lifeboat runs to FILE.KIND")
	round      = flag.Int("round", 1, "round number, used in container names")
	delay      = flag.Duration("delay", 0, "hold every byte between the clients and Azurite this long in each direction (a proxy in this process): round trips of twice that")
	warmupMiB  = flag.Int64("warmup-mib", 512, "before the timed runs, upload this much of the volume's data untimed (Azurite's warm-up)")
)

// run is an extent of the source: data (non-zero) or zero.
type run struct {
	off, n int64
	zero   bool
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("azureinit: ")
	flag.Parse()
	if *endpoint == "" {
		log.Fatal("-endpoint is required")
	}
	size := *sizeMiB << 20
	if *sizeMiB <= 0 || *sizeMiB%16 != 0 {
		log.Fatalf("-size-mib %d: want a positive multiple of 16", *sizeMiB)
	}
	t0 := time.Now()
	vol, runs := makeVolume(size, *seed)
	sum := sha256.Sum256(vol)
	var nonzero, ndata int64
	for _, r := range runs {
		if !r.zero {
			nonzero += r.n
			ndata++
		}
	}
	fmt.Printf("# volume %d MiB, seed %d: %d non-zero bytes (%.2f %%) in %d runs, %d zero runs; sha256 %s; built in %v\n",
		*sizeMiB, *seed, nonzero, 100*float64(nonzero)/float64(size), ndata, int64(len(runs))-ndata, hex.EncodeToString(sum[:8]), time.Since(t0).Round(time.Millisecond))

	ctx := context.Background()
	cred, err := service.NewSharedKeyCredential(*account, *key)
	if err != nil {
		log.Fatal(err)
	}
	ep := strings.TrimSuffix(*endpoint, "/") + "/"
	if *delay > 0 {
		u, err := url.Parse(ep)
		if err != nil {
			log.Fatal(err)
		}
		addr, err := startDelayProxy(u.Host, *delay)
		if err != nil {
			log.Fatal(err)
		}
		u.Host = addr
		ep = u.String()
		fmt.Printf("# clients reach Azurite through a proxy on %s that delays each direction by %v\n", addr, *delay)
	}
	// The same retry policy as azure.New: equal clients on both sides.
	svc, err := service.NewClientWithSharedKeyCredential(ep, cred, &service.ClientOptions{ClientOptions: azcore.ClientOptions{
		Retry: policy.RetryOptions{MaxRetries: 5, RetryDelay: 500 * time.Millisecond, MaxRetryDelay: 30 * time.Second}}})
	if err != nil {
		log.Fatal(err)
	}
	b := bench{vol: vol, runs: runs, size: size, sum: sum, nonzero: nonzero, svc: svc, cred: cred, ep: ep}
	if *warmupMiB > 0 {
		if err := b.warmup(ctx, *warmupMiB<<20); err != nil {
			log.Fatalf("warm-up: %v", err)
		}
	}
	for _, k := range strings.Split(*kinds, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		name := fmt.Sprintf("r%d-%s-%d", *round, k, time.Now().UnixNano())
		if _, err := svc.CreateContainer(ctx, name, nil); err != nil {
			log.Fatalf("create container %s: %v", name, err)
		}
		var res result
		switch k {
		case "lifeboat", "xts", "lifeboatz", "xtsz":
			res, err = b.lifeboat(ctx, name, k)
		case "loop", "loopbatch", "looplease":
			res, err = b.loop(ctx, name, k == "loopbatch", k == "looplease")
		default:
			err = fmt.Errorf("unknown kind %q", k)
		}
		if err != nil {
			log.Fatalf("%s: %v", k, err)
		}
		if _, err := svc.DeleteContainer(ctx, name, nil); err != nil {
			log.Printf("delete container %s: %v", name, err)
		}
		res.print(k, float64(nonzero))
	}
}

// makeVolume builds the source and its runs of data and zeros (64 KiB
// granularity, adjacent slots of a kind joined).
func makeVolume(size int64, seed uint64) ([]byte, []run) {
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	nreg := int(size / region)
	data := nreg * 9 / 16 // data regions
	holes := nreg         // 64 KiB holes in them: 9/16 - 1/16 = 1/2 of the volume is data
	isData := make([]bool, nreg)
	for _, i := range rng.Perm(nreg)[:data] {
		isData[i] = true
	}
	var dataRegions []int
	for i, d := range isData {
		if d {
			dataRegions = append(dataRegions, i)
		}
	}
	zeroSlot := make([]bool, nreg*(region/slot))
	for i := range zeroSlot {
		zeroSlot[i] = !isData[i/(region/slot)]
	}
	perReg := region / slot
	for _, k := range rng.Perm(len(dataRegions) * perReg)[:holes] {
		zeroSlot[dataRegions[k/perReg]*perReg+k%perReg] = true
	}
	vol := make([]byte, size)
	cc := mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'a', 'z', 'u', 'r', 'e'})
	var runs []run
	for i, z := range zeroSlot {
		off := int64(i) * slot
		if !z {
			b := vol[off : off+slot]
			cc.Read(b)
			for p := 0; p < len(b); p += 512 { // no all-zero page in the data
				if allZero(b[p : p+512]) {
					b[p] = 1
				}
			}
		}
		if n := len(runs) - 1; n >= 0 && runs[n].zero == z && runs[n].off+runs[n].n == off {
			runs[n].n += slot
			continue
		}
		runs = append(runs, run{off: off, n: slot, zero: z})
	}
	return vol, runs
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// result is one timed run.
type result struct {
	seconds          float64
	clientCPU        float64
	azuriteCPU       float64
	open, apply      float64 // seconds in phases (lifeboat kinds)
	commit, point    float64
	applies, calls   int
	maxCallsPerApply int
	verified         bool
}

func (r result) print(kind string, nonzero float64) {
	name := "BenchmarkAzureInit/" + kind + "/P=" + strconv.Itoa(*parallel)
	if *label != "" {
		name += "/" + *label
	}
	fmt.Printf("%s 1 %.3f s %.1f MB/s %.2f client-cpu-s", name, r.seconds, nonzero/r.seconds/1e6, r.clientCPU)
	if *azuritePID > 0 {
		fmt.Printf(" %.2f azurite-cpu-s %.2f azurite-cores", r.azuriteCPU, r.azuriteCPU/r.seconds)
	}
	if r.applies > 0 {
		fmt.Printf(" %.3f open-s %.3f apply-s %.3f commit-s %.3f point-s %d applies", r.open, r.apply, r.commit, r.point, r.applies)
	}
	fmt.Printf(" %d calls", r.calls)
	if r.maxCallsPerApply > 0 {
		fmt.Printf(" %d max-calls/batch", r.maxCallsPerApply)
	}
	fmt.Println()
	if r.verified {
		fmt.Printf("# %s: verified: sha256 of the replica's first %d MiB equals the source's\n", kind, *sizeMiB)
	}
}

type bench struct {
	vol     []byte
	runs    []run
	size    int64
	sum     [32]byte
	nonzero int64
	svc     *service.Client
	cred    *service.SharedKeyCredential
	ep      string
}

// clock measures wall, own CPU and Azurite CPU time.
type clock struct {
	t0         time.Time
	cpu0, acpu float64
}

func startClock() clock {
	return clock{t0: time.Now(), cpu0: selfCPU(), acpu: pidCPU(*azuritePID)}
}

func (c clock) stop(r *result) {
	r.seconds = time.Since(c.t0).Seconds()
	r.clientCPU = selfCPU() - c.cpu0
	r.azuriteCPU = pidCPU(*azuritePID) - c.acpu
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// pidCPU is utime+stime of a process from /proc/PID/stat, in seconds.
func pidCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// extents returns the source as Apply batches: data runs cut at maxExt,
// at most seg data bytes per batch; with zeros, ZERO extents for the zero
// runs too (cut at maxExt as the pipeline does), counted as no data.
func (b *bench) extents(maxExt, seg int64, zeros bool) [][]targets.Extent {
	var batches [][]targets.Extent
	var cur []targets.Extent
	var curBytes int64
	for _, r := range b.runs {
		for off, end := r.off, r.off+r.n; off < end; {
			n := min(end-off, maxExt)
			if r.zero {
				if zeros {
					cur = append(cur, targets.Extent{Off: off, Len: n})
				}
				off += n
				continue
			}
			if curBytes+n > seg && len(cur) > 0 {
				batches = append(batches, cur)
				cur, curBytes = nil, 0
			}
			cur = append(cur, targets.Extent{Off: off, Len: n, Data: b.vol[off : off+n : off+n]})
			curBytes += n
			off += n
		}
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
	}
	return batches
}

func (b *bench) lifeboat(ctx context.Context, cont, kind string) (result, error) {
	var res result
	opts := azure.Options{Parallel: *parallel, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if kind == "xts" || kind == "xtsz" {
		k := make([]byte, azure.XTSKeySize)
		rand.Read(k)
		c, err := azure.NewSectorCipher(k)
		if err != nil {
			return res, err
		}
		opts.Cipher = c
	}
	tgt, err := azure.New(azure.Location{Account: *account, Container: cont},
		azure.Credentials{Account: *account, Key: *key, Endpoint: b.ep}, opts)
	if err != nil {
		return res, err
	}
	defer tgt.Close()
	maxExt := tgt.Properties().MaxExtent
	if maxExt <= 0 {
		maxExt = b.size
	}
	batches := b.extents(maxExt, *segment, kind == "lifeboatz" || kind == "xtsz")
	// Count the page blob calls of each batch as the target will plan
	// them (outside the timed part; the target plans again itself).
	g := 512
	if opts.Cipher != nil {
		g = azure.SectorSize
	}
	for _, x := range batches {
		cs, err := azure.Plan(x, g)
		if err != nil {
			return res, err
		}
		res.calls += len(cs)
		res.maxCallsPerApply = max(res.maxCallsPerApply, len(cs))
	}
	info := targets.VolumeInfo{ID: "6c1f0b5e-9a39-4f51-8d0e-" + fmt.Sprintf("%012x", time.Now().UnixNano()&0xffffffffffff),
		Name: "bench", Size: b.size, BlockSize: 4096}
	var prof *os.File
	if *cpuprofile != "" {
		prof, err = os.Create(*cpuprofile + "." + kind)
		if err != nil {
			return res, err
		}
		pprof.StartCPUProfile(prof)
	}
	clk := startClock()
	rep, err := tgt.Open(ctx, info)
	if err != nil {
		return res, err
	}
	defer rep.Close()
	res.open = time.Since(clk.t0).Seconds()
	var seq uint64
	for _, x := range batches {
		t := time.Now()
		if err := rep.Apply(ctx, x); err != nil {
			return res, err
		}
		t1 := time.Now()
		seq += uint64(len(x))
		if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: seq}); err != nil {
			return res, err
		}
		res.apply += t1.Sub(t).Seconds()
		res.commit += time.Since(t1).Seconds()
		res.applies++
	}
	t := time.Now()
	seq++
	if err := rep.CreatePoint(ctx, targets.Point{Seq: seq, Generation: 1, Kind: hrl.TagCrash, Name: "resync complete", Time: time.Now()}); err != nil {
		return res, err
	}
	res.point = time.Since(t).Seconds()
	clk.stop(&res)
	if prof != nil {
		pprof.StopCPUProfile()
		prof.Close()
	}
	if *verify {
		var got []byte
		if opts.Cipher != nil {
			pr, err := rep.OpenPoint(ctx, seq)
			if err != nil {
				return res, err
			}
			got, err = readAllAt(pr, b.size)
			pr.Close()
			if err != nil {
				return res, err
			}
		} else {
			got, err = b.download(ctx, cont, info.ID+".vhd")
			if err != nil {
				return res, err
			}
		}
		if err := b.check(got); err != nil {
			return res, err
		}
		res.verified = true
	}
	return res, nil
}

// loop is the baseline: Create, then UploadPages of every non-zero run cut
// at 4 MiB, -parallel at a time; with barrier, batch by batch like Apply.
func (b *bench) loop(ctx context.Context, cont string, barrier, leased bool) (result, error) {
	var res result
	name := "loop.vhd"
	cc := b.svc.NewContainerClient(cont)
	pb := cc.NewPageBlobClient(name)
	var batches [][]targets.Extent
	if barrier {
		batches = b.extents(azure.MaxPutPage, *segment, false)
	} else {
		batches = [][]targets.Extent{nil}
		for _, x := range b.extents(azure.MaxPutPage, 1<<62, false) {
			batches[0] = append(batches[0], x...)
		}
	}
	for _, x := range batches {
		res.calls += len(x)
	}
	clk := startClock()
	if _, err := pb.Create(ctx, b.size, nil); err != nil {
		return res, err
	}
	var opts *pageblob.UploadPagesOptions
	if leased {
		id := uuid.NewString()
		lc, err := lease.NewBlobClient(pb, &lease.BlobClientOptions{LeaseID: &id})
		if err != nil {
			return res, err
		}
		if _, err := lc.AcquireLease(ctx, 60, nil); err != nil {
			return res, err
		}
		defer lc.ReleaseLease(context.Background(), nil)
		opts = &pageblob.UploadPagesOptions{AccessConditions: &blob.AccessConditions{LeaseAccessConditions: &blob.LeaseAccessConditions{LeaseID: &id}}}
	}
	for _, calls := range batches {
		if err := upload(ctx, pb, calls, *parallel, opts); err != nil {
			return res, err
		}
	}
	clk.stop(&res)
	if *verify {
		got, err := b.download(ctx, cont, name)
		if err != nil {
			return res, err
		}
		if err := b.check(got); err != nil {
			return res, err
		}
		res.verified = true
	}
	return res, nil
}

// warmup uploads the first n bytes of data runs to a page blob of its own
// container, untimed, and deletes the container.
func (b *bench) warmup(ctx context.Context, n int64) error {
	name := fmt.Sprintf("r%d-warmup-%d", *round, time.Now().UnixNano())
	if _, err := b.svc.CreateContainer(ctx, name, nil); err != nil {
		return err
	}
	pb := b.svc.NewContainerClient(name).NewPageBlobClient("warmup.vhd")
	if _, err := pb.Create(ctx, b.size, nil); err != nil {
		return err
	}
	var calls []targets.Extent
	for _, x := range b.extents(azure.MaxPutPage, 1<<62, false) {
		for _, c := range x {
			if n <= 0 {
				break
			}
			calls = append(calls, c)
			n -= int64(len(c.Data))
		}
	}
	if err := upload(ctx, pb, calls, *parallel, nil); err != nil {
		return err
	}
	_, err := b.svc.DeleteContainer(ctx, name, nil)
	return err
}

// upload sends calls with at most par in flight and waits for all.
func upload(ctx context.Context, pb *pageblob.Client, calls []targets.Extent, par int, opts *pageblob.UploadPagesOptions) error {
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for _, c := range calls {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, err := pb.UploadPages(ctx, rsc{bytes.NewReader(c.Data)}, blob.HTTPRange{Offset: c.Off, Count: int64(len(c.Data))}, opts)
			if err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("upload %d bytes at %d: %w", len(c.Data), c.Off, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

type rsc struct{ *bytes.Reader }

func (rsc) Close() error { return nil }

// download reads the first b.size bytes of a blob, 8 MiB per request.
func (b *bench) download(ctx context.Context, cont, name string) ([]byte, error) {
	pb := b.svc.NewContainerClient(cont).NewPageBlobClient(name)
	out := make([]byte, b.size)
	const chunk = 8 << 20
	for off := int64(0); off < b.size; off += chunk {
		n := min(chunk, b.size-off)
		resp, err := pb.DownloadStream(ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: off, Count: n}})
		if err != nil {
			return nil, fmt.Errorf("download %s at %d: %w", name, off, err)
		}
		body := resp.NewRetryReader(ctx, nil)
		_, err = io.ReadFull(body, out[off:off+n])
		body.Close()
		if err != nil {
			return nil, fmt.Errorf("download %s at %d: %w", name, off, err)
		}
	}
	return out, nil
}

func readAllAt(r io.ReaderAt, size int64) ([]byte, error) {
	out := make([]byte, size)
	const chunk = 8 << 20
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		if _, err := r.ReadAt(out[off:off+n], off); err != nil {
			return nil, fmt.Errorf("read point at %d: %w", off, err)
		}
	}
	return out, nil
}

func (b *bench) check(got []byte) error {
	if s := sha256.Sum256(got); s != b.sum {
		for i := range got {
			if got[i] != b.vol[i] {
				return fmt.Errorf("replica differs from the source: sha256 %x, first difference at byte %d", s[:8], i)
			}
		}
		return fmt.Errorf("replica differs from the source: sha256 %x", s[:8])
	}
	return nil
}

// startDelayProxy listens on 127.0.0.1 and forwards every connection to
// target, holding each chunk of bytes d in each direction before passing it
// on (latency without a bandwidth limit: chunks are pipelined). The
// machine has no netem; this stands in for a WAN's round trips.
func startDelayProxy(target string, d time.Duration) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				u, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				go delayPipe(u.(*net.TCPConn), c.(*net.TCPConn), d)
				go delayPipe(c.(*net.TCPConn), u.(*net.TCPConn), d)
			}()
		}
	}()
	return ln.Addr().String(), nil
}

type delayed struct {
	due time.Time
	b   *[]byte // from chunkPool
	n   int
}

var chunkPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// delayPipe copies src to dst, each chunk d after it was read; at EOF it
// closes dst for writing once the queue is empty.
func delayPipe(dst, src *net.TCPConn, d time.Duration) {
	q := make(chan delayed, 4096)
	go func() {
		defer close(q)
		for {
			bp := chunkPool.Get().(*[]byte)
			n, err := src.Read(*bp)
			if n > 0 {
				q <- delayed{time.Now().Add(d), bp, n}
			} else {
				chunkPool.Put(bp)
			}
			if err != nil {
				return
			}
		}
	}()
	failed := false
	for c := range q {
		if w := time.Until(c.due); w > 0 {
			time.Sleep(w)
		}
		if !failed {
			if _, err := dst.Write((*c.b)[:c.n]); err != nil {
				failed = true
				src.Close()
			}
		}
		chunkPool.Put(c.b)
	}
	dst.CloseWrite()
}
