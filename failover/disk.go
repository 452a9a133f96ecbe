package failover

import (
	"context"
	"fmt"

	"lifeboat/pipeline"
	"lifeboat/targets"
)

// checkDisk refuses --azure-disk on a target that cannot make one.
func (m *Manager) checkDisk(req Request) error {
	if _, ok := m.Site.Target.(targets.DiskCloner); req.AzureDisk && !ok {
		return fmt.Errorf("%w: --azure-disk needs an azure:// target; this site's replicas are elsewhere", pipeline.ErrPermanent)
	}
	return nil
}

// cloneDisk copies r's point to a disk of the target's cloud, named
// MACHINE.NAME.pointSEQ, and returns its URL. It reads the point through a
// reader of its own (the view keeps its base).
func (m *Manager) cloneDisk(ctx context.Context, sv pipeline.SiteVolume, r *recovery) (string, error) {
	dc := m.Site.Target.(targets.DiskCloner) // checked by checkDisk
	p, err := sv.Replica().OpenPoint(ctx, r.state.Point.Seq)
	if err != nil {
		return "", err
	}
	defer p.Close()
	info := r.state.Volume
	name := fmt.Sprintf("%s.%s.point%d", info.Machine, info.Name, r.state.Point.Seq)
	log := m.logger().With("volume", volName(info), "point", r.state.Point.Seq, "disk", name)
	url, err := dc.CloneDisk(ctx, p, info.ID, name, func(done, total int64) {
		m.stepPct(info, 100*float64(done)/float64(max(total, 1)), "copying point %d to the Azure disk %s: %d%% (%s of %s)", r.state.Point.Seq, name,
			100*done/max(total, 1), mib(done), mib(total))
	})
	if err != nil {
		return "", fmt.Errorf("--azure-disk: %w", err)
	}
	log.Info("disk for Azure ready", "url", url)
	return url, nil
}
