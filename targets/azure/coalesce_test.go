package azure_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// checkPlan verifies the planner's guarantees for calls planned from exts:
// 512-aligned, PutPages at most 4 MiB and never an all-zero page as data,
// sorted and non-overlapping, covering exactly the pages the extents cover,
// adjacent calls of one kind joined, and, applied to an image that already
// holds other bytes, the same content as applying the extents in order.
func checkPlan(t testing.TB, exts []targets.Extent, calls []azure.Call, size int64) {
	t.Helper()
	const page = 512
	var zero [page]byte
	last := int64(-1)
	for i, c := range calls {
		if c.Off%page != 0 || c.Len%page != 0 || c.Len <= 0 {
			t.Fatalf("call %d %v: %d bytes at %d, not a positive multiple of 512 at a multiple of 512", i, c.Kind, c.Len, c.Off)
		}
		if c.Off < last {
			t.Fatalf("call %d %v at %d overlaps or precedes the previous call ending at %d", i, c.Kind, c.Off, last)
		}
		switch c.Kind {
		case azure.PutPages:
			if int64(len(c.Data)) != c.Len {
				t.Fatalf("call %d PutPages at %d: Len %d, %d bytes of data", i, c.Off, c.Len, len(c.Data))
			}
			if c.Len > azure.MaxPutPage {
				t.Fatalf("call %d PutPages at %d: %d bytes, more than %d", i, c.Off, c.Len, azure.MaxPutPage)
			}
			for p := 0; p < len(c.Data); p += page {
				if bytes.Equal(c.Data[p:p+page], zero[:]) {
					t.Fatalf("call %d PutPages at %d sends the zero page at %d as data", i, c.Off, c.Off+int64(p))
				}
			}
		case azure.ClearPages:
			if c.Data != nil {
				t.Fatalf("call %d ClearPages at %d carries %d bytes of data", i, c.Off, len(c.Data))
			}
		default:
			t.Fatalf("call %d: kind %v", i, c.Kind)
		}
		if i > 0 {
			prev := calls[i-1]
			if prev.Off+prev.Len == c.Off && prev.Kind == c.Kind && (c.Kind == azure.ClearPages || prev.Len < azure.MaxPutPage) {
				t.Fatalf("calls %d and %d: adjacent %v calls (%d bytes at %d, %d at %d) not joined", i-1, i, c.Kind, prev.Len, prev.Off, c.Len, c.Off)
			}
		}
		last = c.Off + c.Len
	}

	// Model: a background of non-zero bytes, the extents applied in order
	// to one copy and the calls to another.
	bg := make([]byte, size)
	for i := range min(size, page) {
		bg[i] = byte(i*7+1) | 1
	}
	for n := int64(page); n < size; n *= 2 {
		copy(bg[n:], bg[:n])
	}
	want, got := bytes.Clone(bg), bytes.Clone(bg)
	covered := make([]bool, size/page)
	for _, e := range exts {
		n := e.Length()
		if e.Data != nil {
			copy(want[e.Off:], e.Data)
		} else {
			clear(want[e.Off : e.Off+n])
		}
		for p := e.Off / page; p < (e.Off+n)/page; p++ {
			covered[p] = true
		}
	}
	for _, c := range calls {
		if c.Off+c.Len > size {
			t.Fatalf("%v call of %d bytes at %d, beyond every extent (image %d)", c.Kind, c.Len, c.Off, size)
		}
		if c.Kind == azure.PutPages {
			copy(got[c.Off:], c.Data)
		} else {
			clear(got[c.Off : c.Off+c.Len])
		}
		for p := c.Off / page; p < (c.Off+c.Len)/page; p++ {
			if !covered[p] {
				t.Fatalf("%v call of %d bytes at %d touches page %d, which no extent covers", c.Kind, c.Len, c.Off, p)
			}
			covered[p] = false
		}
	}
	for p, left := range covered {
		if left {
			t.Fatalf("page %d (offset %d) is covered by an extent but by no call", p, int64(p)*page)
		}
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("image after the calls differs from the extents applied in order at byte %d: got %#x, want %#x", i, got[i], want[i])
			}
		}
	}
}

// randomExtents makes a batch like a process server applies: data extents
// with random, zero and mixed blocks, zero and trim extents, overlapping and
// adjacent, some longer than 4 MiB.
func randomExtents(r *rand.Rand, size int64, bs int) []targets.Extent {
	nblocks := size / int64(bs)
	fill := rand.NewChaCha8([32]byte{byte(r.Uint64()), byte(r.Uint64())})
	n := 1 + r.IntN(40)
	exts := make([]targets.Extent, 0, n)
	var prevEnd int64
	for range n {
		var off int64
		switch r.IntN(4) {
		case 0: // right after the previous extent
			off = prevEnd
		default:
			off = r.Int64N(nblocks) * int64(bs)
		}
		maxBlocks := (size - off) / int64(bs)
		if maxBlocks == 0 {
			off, maxBlocks = 0, nblocks
		}
		var blocks int64
		switch r.IntN(8) {
		case 0: // long: up to the whole image, often more than 4 MiB
			blocks = 1 + r.Int64N(maxBlocks)
		default:
			blocks = 1 + r.Int64N(min(maxBlocks, 16))
		}
		ln := blocks * int64(bs)
		e := targets.Extent{Off: off}
		switch r.IntN(5) {
		case 0:
			e.Len = ln
		case 1:
			e.Len, e.Trim = ln, true
		default:
			e.Data = make([]byte, ln)
			mode := r.IntN(4)
			for p := 0; p < len(e.Data); p += 512 {
				switch {
				case mode == 0: // all zero data
				case mode == 1 && r.IntN(3) == 0: // zero pages inside data
				case mode == 2 && r.IntN(50) == 0: // one non-zero byte
					e.Data[p+r.IntN(512)] = byte(1 + r.IntN(255))
				default: // random: all zero with probability 2^-4096
					fill.Read(e.Data[p : p+512])
				}
			}
			if r.IntN(3) == 0 {
				e.Len = ln // Len may repeat len(Data)
			}
		}
		exts = append(exts, e)
		prevEnd = off + ln
		if prevEnd >= size {
			prevEnd = 0
		}
	}
	return exts
}

func fillPage(p []byte, seed uint64) {
	for i := range p {
		seed = seed*6364136223846793005 + 1442695040888963407
		p[i] = byte(seed>>56) | 1
	}
}

// TestPlanRandom is the acceptance test: random block sets produce
// Put Page calls that are 512-aligned, at most 4 MiB, cover exactly the
// blocks, never send a zero block as data, and give the same image.
func TestPlanRandom(t *testing.T) {
	seeds := 400
	if testing.Short() {
		seeds = 50
	}
	var p azure.Planner
	for seed := range seeds {
		r := rand.New(rand.NewPCG(uint64(seed), 5))
		bs := []int{512, 1024, 4096, 65536}[r.IntN(4)]
		maxSize := int64(512 << 10)
		if seed%4 == 0 { // room for runs longer than 4 MiB
			maxSize = 12 << 20
		}
		size := int64(bs) * (1 + r.Int64N(maxSize/int64(bs)))
		exts := randomExtents(r, size, bs)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			calls, err := p.Plan(exts, bs)
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			checkPlan(t, exts, calls, size)
		})
	}
}

func TestPlanCases(t *testing.T) {
	data := func(n int, fill byte) []byte { return bytes.Repeat([]byte{fill}, n) }
	withZeroPage := data(8192, 7)
	clear(withZeroPage[4096 : 4096+512])
	type want struct {
		kind     azure.CallKind
		off, len int64
	}
	P, C := azure.PutPages, azure.ClearPages
	for _, tc := range []struct {
		name string
		exts []targets.Extent
		want []want
	}{
		{"empty", nil, nil},
		{"one block", []targets.Extent{{Off: 4096, Data: data(4096, 1)}}, []want{{P, 4096, 4096}}},
		{"adjacent blocks join", []targets.Extent{{Off: 8192, Data: data(4096, 1)}, {Off: 4096, Data: data(4096, 2)}}, []want{{P, 4096, 8192}}},
		{"gap keeps them apart", []targets.Extent{{Off: 0, Data: data(4096, 1)}, {Off: 8192, Data: data(4096, 2)}}, []want{{P, 0, 4096}, {P, 8192, 4096}}},
		{"10 MiB cut at 4 MiB", []targets.Extent{{Off: 0, Data: data(10<<20, 1)}}, []want{{P, 0, 4 << 20}, {P, 4 << 20, 4 << 20}, {P, 8 << 20, 2 << 20}}},
		{"zero page inside data", []targets.Extent{{Off: 0, Data: withZeroPage}}, []want{{P, 0, 4096}, {C, 4096, 512}, {P, 4608, 3584}}},
		{"all-zero data is a clear", []targets.Extent{{Off: 0, Data: data(8192, 0)}}, []want{{C, 0, 8192}}},
		{"zero and trim join", []targets.Extent{{Off: 0, Len: 4096}, {Off: 4096, Len: 4096, Trim: true}, {Off: 8192, Data: data(4096, 0)}}, []want{{C, 0, 12288}}},
		{"clear is not cut at 4 MiB", []targets.Extent{{Off: 0, Len: 16 << 20}}, []want{{C, 0, 16 << 20}}},
		{"later trim wins over data", []targets.Extent{{Off: 0, Data: data(16384, 1)}, {Off: 4096, Len: 4096, Trim: true}}, []want{{P, 0, 4096}, {C, 4096, 4096}, {P, 8192, 8192}}},
		{"later data wins over trim", []targets.Extent{{Off: 0, Len: 16384}, {Off: 4096, Data: data(4096, 3)}}, []want{{C, 0, 4096}, {P, 4096, 4096}, {C, 8192, 8192}}},
		{"rewrite of one block", []targets.Extent{{Off: 0, Data: data(4096, 1)}, {Off: 0, Data: data(4096, 2)}}, []want{{P, 0, 4096}}},
		{"empty extent ignored", []targets.Extent{{Off: 4096, Len: 0}, {Off: 0, Data: []byte{}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls, err := azure.Plan(tc.exts, 4096)
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			var got []want
			for _, c := range calls {
				got = append(got, want{c.Kind, c.Off, c.Len})
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("calls: got %v, want %v", got, tc.want)
			}
			size := int64(0)
			for _, e := range tc.exts {
				size = max(size, e.Off+e.Length())
			}
			checkPlan(t, tc.exts, calls, size)
		})
	}
}

func TestPlanAliases(t *testing.T) {
	d := bytes.Repeat([]byte{9}, 1<<20)
	calls, err := azure.Plan([]targets.Extent{{Off: 1 << 20, Data: d}}, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || &calls[0].Data[0] != &d[0] {
		t.Errorf("one extent of 1 MiB: got %d calls, want one aliasing the extent's data", len(calls))
	}
}

func TestPlanInvalid(t *testing.T) {
	for _, tc := range []struct {
		name      string
		exts      []targets.Extent
		blockSize int
		want      error
	}{
		{"block size 0", nil, 0, targets.ErrUnaligned},
		{"block size 1000", nil, 1000, targets.ErrUnaligned},
		{"unaligned offset", []targets.Extent{{Off: 512, Data: make([]byte, 4096)}}, 4096, targets.ErrUnaligned},
		{"unaligned length", []targets.Extent{{Off: 0, Data: make([]byte, 4000)}}, 4096, targets.ErrUnaligned},
		{"unaligned zero extent", []targets.Extent{{Off: 0, Len: 100}}, 512, targets.ErrUnaligned},
		{"negative offset", []targets.Extent{{Off: -4096, Len: 4096}}, 4096, targets.ErrOutOfRange},
		{"negative length", []targets.Extent{{Off: 0, Len: -4096}}, 4096, targets.ErrOutOfRange},
		{"overflow", []targets.Extent{{Off: math.MaxInt64 - 4095, Len: 8192}}, 4096, targets.ErrOutOfRange},
		{"Len disagrees with Data", []targets.Extent{{Off: 0, Len: 8192, Data: make([]byte, 4096)}}, 4096, targets.ErrOutOfRange},
		{"bad extent after good ones", []targets.Extent{{Off: 0, Len: 4096}, {Off: 4096, Len: 512}}, 4096, targets.ErrUnaligned},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls, err := azure.Plan(tc.exts, tc.blockSize)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Plan: got %v (%d calls), want an error wrapping %v", err, len(calls), tc.want)
			}
			if calls != nil {
				t.Errorf("Plan returned %d calls with its error", len(calls))
			}
		})
	}
}

// TestPlannerReuse checks that a Planner reused for batches of the same shape
// plans without allocating.
func TestPlannerReuse(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	exts := randomExtents(r, 8<<20, 4096)
	var p azure.Planner
	if _, err := p.Plan(exts, 4096); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := p.Plan(exts, 4096); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("reused Planner: %v allocations per Plan, want 0", allocs)
	}
}

// FuzzPlan: arbitrary extents never panic, invalid ones are refused with an
// error and valid ones give calls that pass checkPlan.
func FuzzPlan(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, uint8(0))
	f.Add([]byte{1, 0, 8, 2, 1, 2, 0, 3, 3}, uint8(3))
	f.Add(bytes.Repeat([]byte{0xff}, 64), uint8(1))
	f.Fuzz(func(t *testing.T, in []byte, bsSel uint8) {
		bs := []int{512, 1024, 4096, 700}[bsSel%4]
		var exts []targets.Extent
		var size int64
		// Each extent takes 3 bytes: kind+unaligned bits, offset, length.
		for len(in) >= 3 && len(exts) < 64 {
			kind, o, l := in[0], int64(in[1]), int64(in[2]%64)
			in = in[3:]
			e := targets.Extent{Off: o * 512}
			ln := l * 512
			if kind&0x80 != 0 { // sometimes unaligned
				e.Off += int64(kind & 0x0f)
			}
			switch kind % 4 {
			case 0:
				e.Len = ln
			case 1:
				e.Len, e.Trim = ln, true
			case 2:
				e.Data = make([]byte, ln)
				for i := range e.Data {
					if len(in) > 0 {
						e.Data[i] = in[i%len(in)] & (kind >> 4 & 1 * 0xff)
					}
				}
			case 3:
				e.Data = make([]byte, ln)
				e.Len = ln + int64(kind>>6)*512 // sometimes disagrees
			}
			exts = append(exts, e)
			size = max(size, e.Off+e.Length())
		}
		calls, err := azure.Plan(exts, bs)
		valid := bs%512 == 0
		for _, e := range exts {
			n := e.Length()
			if e.Off%int64(bs) != 0 || n%int64(bs) != 0 || (e.Data != nil && e.Len != 0 && e.Len != int64(len(e.Data))) {
				valid = false
			}
		}
		if !valid {
			if err == nil {
				t.Fatalf("Plan accepted invalid extents %v with block size %d", extentsString(exts), bs)
			}
			return
		}
		if err != nil {
			t.Fatalf("Plan refused valid extents %v: %v", extentsString(exts), err)
		}
		checkPlan(t, exts, calls, size)
	})
}

func extentsString(exts []targets.Extent) string {
	var b bytes.Buffer
	for _, e := range exts {
		fmt.Fprintf(&b, "{off %d len %d data %d trim %v} ", e.Off, e.Len, len(e.Data), e.Trim)
	}
	return b.String()
}

// BenchmarkPlan measures the planner on 16 MiB batches of churn (a reused
// Planner, and -fresh: the package-level Plan) and reports
// the effect of coalescing as Put Page calls (PutPages + ClearPages) and
// bytes uploaded per GiB of churn.
func BenchmarkPlan(b *testing.B) {
	const batch = 16 << 20
	const volume = 1 << 30
	mk := func(name string, writeSize int, seq bool, zeroEvery int, fresh bool) {
		b.Run(name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(7, 7))
			buf := make([]byte, batch)
			for p := 0; p < batch; p += 512 {
				fillPage(buf[p:p+512], r.Uint64())
				if zeroEvery > 0 && (p/65536)%zeroEvery == 0 {
					clear(buf[p : p+512])
				}
			}
			exts := make([]targets.Extent, 0, batch/writeSize)
			base := r.Int64N(volume/batch) * batch
			for i := 0; i < batch; i += writeSize {
				off := base + int64(i)
				if !seq {
					off = r.Int64N(volume/int64(writeSize)) * int64(writeSize)
				}
				exts = append(exts, targets.Extent{Off: off, Data: buf[i : i+writeSize]})
			}
			var p azure.Planner
			var calls, uploaded int64
			b.SetBytes(batch)
			b.ReportAllocs()
			for b.Loop() {
				plan := p.Plan
				if fresh { // a new Planner each time: what the package-level Plan costs
					plan = azure.Plan
				}
				cs, err := plan(exts, 4096)
				if err != nil {
					b.Fatal(err)
				}
				calls, uploaded = 0, 0
				for _, c := range cs {
					calls++
					uploaded += int64(len(c.Data))
				}
			}
			perGiB := float64(1<<30) / batch
			b.ReportMetric(float64(calls)*perGiB, "calls/GiB")
			b.ReportMetric(float64(uploaded)*perGiB, "uploadB/GiB")
		})
	}
	mk("random-4KiB", 4096, false, 0, false)
	mk("random-4KiB-fresh", 4096, false, 0, true)
	mk("sequential-1MiB", 1<<20, true, 0, false)
	mk("sequential-1MiB-fresh", 1<<20, true, 0, true)
	mk("sequential-1MiB-halfzero", 1<<20, true, 2, false)
}

// TestPlanAzurite applies planned calls to a page blob on Azurite, all of a
// batch at once (they do not overlap), and compares the blob with the
// extents applied in order to a model image.
func TestPlanAzurite(t *testing.T) {
	s := azuritetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := s.NewContainer(t, "plan")
	const size = 12 << 20
	pb := c.NewPageBlobClient("vol")
	if _, err := pb.Create(ctx, size, nil); err != nil {
		t.Fatalf("create page blob: %v", err)
	}
	model := make([]byte, size)
	var p azure.Planner
	for round := range 4 {
		r := rand.New(rand.NewPCG(uint64(round), 9))
		exts := randomExtents(r, size, 4096)
		calls, err := p.Plan(exts, 4096)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		errs := make([]error, len(calls))
		for i, call := range calls {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				rg := blob.HTTPRange{Offset: call.Off, Count: call.Len}
				if call.Kind == azure.ClearPages {
					_, errs[i] = pb.ClearPages(ctx, rg, nil)
					return
				}
				_, errs[i] = pb.UploadPages(ctx, readSeekNopCloser{bytes.NewReader(call.Data)}, rg, nil)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, e := range exts {
			if e.Data != nil {
				copy(model[e.Off:], e.Data)
			} else {
				clear(model[e.Off : e.Off+e.Len])
			}
		}
		got := make([]byte, size)
		if _, err := pb.DownloadBuffer(ctx, got, nil); err != nil {
			t.Fatalf("round %d: download: %v", round, err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("round %d (%d extents, %d calls): blob differs from the extents applied in order", round, len(exts), len(calls))
		}
	}
}

type readSeekNopCloser struct{ *bytes.Reader }

func (readSeekNopCloser) Close() error { return nil }
