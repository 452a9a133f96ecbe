package targets

import "fmt"

// Length is the number of bytes e changes: len(Data), or Len for a zero
// extent (Data == nil).
func (e Extent) Length() int64 {
	if e.Data != nil {
		return int64(len(e.Data))
	}
	return e.Len
}

// CheckExtents validates extents against a replica of size bytes and a
// target's properties, as every implementation's Apply must: each extent
// lies inside [0, size), is aligned to p.Alignment, is at most p.MaxExtent
// long (when set), and a data extent's Len, when set, equals len(Data).
// Errors wrap ErrOutOfRange or ErrUnaligned.
func CheckExtents(extents []Extent, size int64, p Properties) error {
	for i, e := range extents {
		n := e.Length()
		if e.Data != nil && e.Len != 0 && e.Len != int64(len(e.Data)) {
			return fmt.Errorf("extent %d at %d: Len %d disagrees with %d bytes of Data", i, e.Off, e.Len, len(e.Data))
		}
		if e.Off < 0 || n < 0 || e.Off > size || n > size-e.Off {
			return fmt.Errorf("extent %d: %d bytes at %d, replica size %d: %w", i, n, e.Off, size, ErrOutOfRange)
		}
		if a := p.Alignment; a > 1 && (e.Off%a != 0 || n%a != 0) {
			return fmt.Errorf("extent %d: %d bytes at %d, alignment %d: %w", i, n, e.Off, a, ErrUnaligned)
		}
		if p.MaxExtent > 0 && n > p.MaxExtent {
			return fmt.Errorf("extent %d: %d bytes, more than the target's largest extent %d: %w", i, n, p.MaxExtent, ErrOutOfRange)
		}
	}
	return nil
}

// SamePoint reports whether a and b describe the same recovery point: all
// fields equal, times compared with time.Time.Equal.
func SamePoint(a, b Point) bool {
	return a.Seq == b.Seq && a.Generation == b.Generation && a.Kind == b.Kind &&
		a.Name == b.Name && a.Time.Equal(b.Time)
}
