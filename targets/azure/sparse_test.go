package azure_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// nonZero lists the grain-sized pieces of data that hold a non-zero byte,
// as merged spans.
func nonZero(data []byte, grain int) []span {
	var out []span
	for off := 0; off < len(data); off += grain {
		if !bytes.Equal(data[off:off+grain], make([]byte, grain)) {
			if n := len(out); n > 0 && out[n-1].hi == int64(off) {
				out[n-1].hi += int64(grain)
				continue
			}
			out = append(out, span{int64(off), int64(off + grain)})
		}
	}
	return out
}

// dataRanges is the blob's page ranges without the footer's page.
func dataRanges(t *testing.T, rep targets.Replica, ranges []span) []span {
	t.Helper()
	foot := azure.VHDDataSize(rep.Info().Size)
	if n := len(ranges); n == 0 || ranges[n-1].hi != foot+azure.FooterSize {
		t.Fatalf("page ranges %v do not end with the footer at %d", ranges, foot)
	}
	ranges[len(ranges)-1].hi = foot
	if ranges[len(ranges)-1].lo == foot {
		ranges = ranges[:len(ranges)-1]
	}
	return ranges
}

// TestInitialReplicationIsSparse: the initial copy of a volume whose
// regions are data, zero-filled data and ZERO extents writes pages only
// where the volume holds data, with and without encryption. Later zeroing
// of written data clears it in plaintext and writes encrypted zeros with a
// cipher (which does not show trims).
func TestInitialReplicationIsSparse(t *testing.T) {
	s := azuritetest.Start(t)
	key, err := azure.NewSectorCipher(cipherKey(7))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		cipher *azure.SectorCipher
		grain  int
	}{{"plain", nil, 512}, {"encrypted", key, azure.SectorSize}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cont := newContainer(t, s)
			tg := newTarget(t, s, cont, azure.Options{Cipher: tc.cipher})
			const size, region = 64 << 20, 1 << 20
			info := targets.VolumeInfo{ID: "5f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0", Name: "sparse", Size: size, BlockSize: 4096}
			rep, err := tg.Open(ctx, info)
			if err != nil {
				t.Fatal(err)
			}
			defer rep.Close()
			pb := containerClient(t, s, cont).NewPageBlobClient("lb/" + info.ID + ".vhd")
			m := newModel(size, 64)
			var exts []targets.Extent
			for i := range int64(size / region) {
				off := i * region
				switch i % 8 {
				case 0, 2, 4, 6: // half: zero-filled data
					exts = append(exts, targets.Extent{Off: off, Data: make([]byte, region)})
				case 3: // a ZERO record
					exts = append(exts, targets.Extent{Off: off, Len: region})
				case 1, 5:
					exts = append(exts, targets.Extent{Off: off, Data: m.random(region)})
				case 7: // data with zero 4 KiB blocks and a zero 512-byte page
					d := m.random(region)
					for b := 0; b < region; b += 64 << 10 {
						clear(d[b : b+4096])
					}
					clear(d[8192+512 : 8192+1024])
					exts = append(exts, targets.Extent{Off: off, Data: d})
				}
				if len(exts) == 4 { // batches of 4 MiB, as the pipeline sends
					m.apply(t, rep, exts)
					exts = nil
				}
			}
			checkRanges := func(want []span) {
				t.Helper()
				got := dataRanges(t, rep, pageRanges(t, pb))
				if !slices.Equal(got, want) {
					t.Fatalf("page ranges (%d) differ from the non-zero %d-byte pieces (%d):\ngot  %v\nwant %v", len(got), tc.grain, len(want), head(got), head(want))
				}
			}
			initial := nonZero(m.data, tc.grain)
			checkRanges(initial)
			checkContent(t, rep, 1, m.data)

			// Zero written data (a trim, and zero-filled data), and
			// zero a hole again.
			m.apply(t, rep, []targets.Extent{
				{Off: 1 * region, Len: region, Trim: true},
				{Off: 5*region + 4096, Data: make([]byte, 64<<10)},
				{Off: 0, Len: 2 * region},
			})
			if tc.cipher == nil {
				checkRanges(nonZero(m.data, tc.grain))
			} else {
				checkRanges(initial) // written sectors stay written
			}
			checkContent(t, rep, 2, m.data[:6*region]) // what changed
		})
	}
}

// checkContent makes point seq and compares its first bytes with want.
func checkContent(t *testing.T, rep targets.Replica, seq uint64, want []byte) {
	t.Helper()
	ctx := context.Background()
	if err := rep.CreatePoint(ctx, testPoint(seq)); err != nil {
		t.Fatal(err)
	}
	pr, err := rep.OpenPoint(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	got := make([]byte, len(want))
	if _, err := pr.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("point %d does not read back what was applied", seq)
	}
}

func head(s []span) string {
	if len(s) > 8 {
		return fmt.Sprint(s[:8]) + "..."
	}
	return fmt.Sprint(s)
}
