package azure_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// changedSince is ChangedSince(seq) of rep as spans, checked to be sorted,
// disjoint, merged and within the volume.
func changedSince(t *testing.T, rep targets.Replica, seq uint64) []span {
	t.Helper()
	rs, err := rep.(targets.ChangeLister).ChangedSince(context.Background(), seq)
	if err != nil {
		t.Fatalf("ChangedSince(%d): %v", seq, err)
	}
	var out []span
	for _, r := range rs {
		x := span{r.Off, r.Off + r.Len}
		if r.Len <= 0 || r.Off < 0 || x.hi > rep.Info().Size || len(out) > 0 && out[len(out)-1].hi >= x.lo {
			t.Fatalf("ChangedSince(%d) = %v: not sorted, disjoint, merged ranges within the volume of %d bytes", seq, rs, rep.Info().Size)
		}
		out = append(out, x)
	}
	return out
}

// covers reports whether spans (sorted, merged) hold all of x.
func covers(spans []span, x span) bool {
	for _, s := range spans {
		if s.lo <= x.lo && x.hi <= s.hi {
			return true
		}
	}
	return false
}

func overlaps(spans []span, x span) bool {
	for _, s := range spans {
		if s.lo < x.hi && x.lo < s.hi {
			return true
		}
	}
	return false
}

// TestChangedSince: with and without a cipher, the ranges changed since a
// point hold every range written or zeroed after it, in the volume's
// offsets, and none that was never written; ranges written only before
// the point are left out where the service's diff is exact (Azurite's is
// not: it lists every page range of the blob). A volume grown since the
// point lists the grown part.
func TestChangedSince(t *testing.T) {
	s := azuritetest.Start(t)
	for _, tc := range []struct {
		name   string
		cipher *azure.SectorCipher
	}{{"plain", nil}, {"encrypted", testCipher(t)}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cont := newContainer(t, s)
			tg := newTarget(t, s, cont, azure.Options{Cipher: tc.cipher})
			const size = 8<<20 + 3*4096 // the VHD pads it to 9 MiB
			info := targets.VolumeInfo{ID: "5f2a3b4c-5d6e-4f70-8192-a3b4c5d6e7f8", Name: "changed", Size: size, BlockSize: 4096}
			rep, err := tg.Open(ctx, info)
			if err != nil {
				t.Fatal(err)
			}
			m := newModel(size, 3)
			before := span{0, 1 << 20}
			m.apply(t, rep, []targets.Extent{{Off: before.lo, Data: m.random(int(before.hi))}})
			m.checkPoint(t, rep, 1)
			written := []span{
				{2 << 20, 2<<20 + 64<<10},  // data
				{3<<20 + 100, 3<<20 + 110}, // a partial page
				{size - 4096, size},        // the last block, before the padding
			}
			zeroed := span{512 << 10, 512<<10 + 64<<10}
			m.apply(t, rep, []targets.Extent{
				{Off: written[0].lo, Data: m.random(64 << 10)},
				{Off: written[1].lo, Data: m.random(10)},
				{Off: written[2].lo, Data: m.random(4096)},
				{Off: zeroed.lo, Len: zeroed.hi - zeroed.lo},
			})
			if tc.cipher != nil {
				// Encrypted zeros are written pages. Plain, the pages are
				// cleared: a ClearRange of the diff, which Azurite does not
				// return (Azure/Azurite#812, #298); see
				// TestChangedSinceDiffResponse.
				written = append(written, zeroed)
			}
			never := span{5 << 20, 8 << 20}
			got := changedSince(t, rep, 1)
			for _, w := range written {
				if !covers(got, w) {
					t.Errorf("ChangedSince(1) = %v misses %v, written after the point", got, w)
				}
			}
			if overlaps(got, never) {
				t.Errorf("ChangedSince(1) = %v reports %v, never written", got, never)
			}
			if overlaps(got, span{0, 256 << 10}) {
				t.Logf("the diff reports ranges written only before the point (Azurite lists every page range): %v", got)
			}

			m.checkPoint(t, rep, 2)
			if got := changedSince(t, rep, 2); overlaps(got, never) {
				t.Errorf("ChangedSince(2) = %v reports %v, never written", got, never)
			}
			late := span{4 << 20, 4<<20 + 8192}
			m.apply(t, rep, []targets.Extent{{Off: late.lo, Data: m.random(8192)}})
			for _, seq := range []uint64{1, 2} {
				if got := changedSince(t, rep, seq); !covers(got, late) {
					t.Errorf("ChangedSince(%d) = %v misses %v, applied after the last point", seq, got, late)
				}
			}
			if _, err := rep.(targets.ChangeLister).ChangedSince(ctx, 7); !errors.Is(err, targets.ErrNotFound) {
				t.Errorf("ChangedSince of no point: %v, want ErrNotFound", err)
			}
			if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 3}); err != nil {
				t.Fatal(err)
			}
			rep.Close()

			info.Size = 12 << 20
			if rep, err = tg.Open(ctx, info); err != nil {
				t.Fatal(err)
			}
			defer rep.Close()
			if got := changedSince(t, rep, 2); !covers(got, span{size, 12 << 20}) || !covers(got, late) || overlaps(got, never) {
				t.Errorf("ChangedSince(2) after growing to %d = %v: want %v and %v, not %v", info.Size, got, span{size, 12 << 20}, late, never)
			}
		})
	}
}

// TestChangedSinceDiffResponse answers Get Page Ranges Diff with a canned
// two-page response of the service (Azurite has no diff): page and clear
// ranges both count, adjacent ones merge, the padding and footer are cut
// off, and with a cipher ranges widen to whole 4 KiB sectors.
func TestChangedSinceDiffResponse(t *testing.T) {
	s := azuritetest.Start(t)
	const size = 8<<20 + 3*4096
	foot := azure.VHDDataSize(size)
	pages := map[string]string{
		"": `<PageRange><Start>0</Start><End>511</End></PageRange>
			<ClearRange><Start>1049088</Start><End>1049599</End></ClearRange><NextMarker>p2</NextMarker>`,
		"p2": fmt.Sprintf(`<PageRange><Start>512</Start><End>1023</End></PageRange>
			<ClearRange><Start>%d</Start><End>%d</End></ClearRange><NextMarker/>`, size-512, foot+azure.FooterSize-1),
	}
	var mu sync.Mutex
	var asked []string // prevsnapshot and x-ms-range of each diff request
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: u.Scheme, Host: u.Host})
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("prevsnapshot") == "" {
			rp.ServeHTTP(w, r)
			return
		}
		mu.Lock()
		asked = append(asked, q.Get("prevsnapshot")+" "+r.Header.Get("x-ms-range"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/xml")
		io.WriteString(w, `<?xml version="1.0" encoding="utf-8"?><PageList>`+pages[q.Get("marker")]+`</PageList>`)
	}))
	defer proxy.Close()

	for _, tc := range []struct {
		name   string
		cipher *azure.SectorCipher
		want   []span
	}{
		{"plain", nil, []span{{0, 1024}, {1049088, 1049600}, {size - 512, size}}},
		{"encrypted", testCipher(t), []span{{0, 4096}, {1 << 20, 1<<20 + 4096}, {size - 4096, size}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cont := newContainer(t, s)
			creds := azure.Credentials{Account: s.Account, Key: s.Key, Endpoint: proxy.URL + "/" + s.Account + "/"}
			tg, err := azure.New(azure.Location{Account: s.Account, Container: cont, Prefix: "lb/"}, creds, azure.Options{Cipher: tc.cipher})
			if err != nil {
				t.Fatal(err)
			}
			defer tg.Close()
			info := targets.VolumeInfo{ID: "6a3b4c5d-6e7f-4081-92a3-b4c5d6e7f809", Name: "diff", Size: size, BlockSize: 4096}
			rep, err := tg.Open(ctx, info)
			if err != nil {
				t.Fatal(err)
			}
			defer rep.Close()
			m := newModel(size, 5)
			m.checkPoint(t, rep, 1)
			mu.Lock()
			asked = nil
			mu.Unlock()
			if got := changedSince(t, rep, 1); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("ChangedSince(1) = %v, want %v", got, tc.want)
			}
			snap := snapshotOf(t, containerClient(t, s, cont), "lb/"+info.ID+".vhd", 1)
			su, err := url.Parse(snap.URL())
			if err != nil {
				t.Fatal(err)
			}
			want := su.Query().Get("snapshot") + " bytes=0-" + fmt.Sprint(size-1)
			mu.Lock()
			defer mu.Unlock()
			if len(asked) != 2 || asked[0] != want || asked[1] != want {
				t.Errorf("diff requests %q, want two (one per page) of %q", asked, want)
			}
		})
	}
}
