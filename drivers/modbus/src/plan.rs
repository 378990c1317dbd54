//! Read planning: turn a device's point map into the fewest read requests the protocol allows.
//!
//! Points are grouped by table and sorted by address; neighbours are merged into one request
//! while the merged span stays within the protocol limit (125 registers, 2000 bits) and the hole
//! between them is no larger than `max_gap` items — reading a few unused registers is cheaper
//! than another round trip, but some devices answer an exception for unmapped addresses, so the
//! gap is configurable and 0 disables bridging. A point is never split across two requests.

use crate::point::{PointSpec, Table};

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Indices into the device's point list.
    pub points: Vec<usize>,
}

impl ReadBlock {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count) - 1
    }
}

/// Plan the reads for `points`. `max_gap` is in items (registers or bits) of the table.
pub fn plan(points: &[PointSpec], max_gap: u16) -> Vec<ReadBlock> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address, points[i].end()));

    let mut blocks: Vec<ReadBlock> = Vec::new();
    for i in order {
        let p = &points[i];
        let (start, end) = (u32::from(p.address), p.end());
        if let Some(b) = blocks.last_mut() {
            if b.table == p.table {
                let new_end = end.max(b.end());
                let gap = start.saturating_sub(b.end() + 1);
                let span = new_end - u32::from(b.start) + 1;
                if gap <= u32::from(max_gap) && span <= u32::from(p.table.max_read()) {
                    b.count = span as u16;
                    b.points.push(i);
                    continue;
                }
            }
        }
        blocks.push(ReadBlock {
            table: p.table,
            start: p.address,
            count: (end - start + 1) as u16,
            points: vec![i],
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::point;

    fn spans(b: &[ReadBlock]) -> Vec<(Table, u16, u16)> {
        b.iter().map(|b| (b.table, b.start, b.count)).collect()
    }

    #[test]
    fn adjacent_points_merge_and_tables_stay_apart() {
        let pts = vec![
            point("holding:0", "u16"),
            point("holding:1", "u32"),
            point("input:0", "f32"),
            point("holding:3", "u16"),
        ];
        let b = plan(&pts, 0);
        assert_eq!(
            spans(&b),
            vec![(Table::Input, 0, 2), (Table::Holding, 0, 4)]
        );
        assert_eq!(b[1].points, vec![0, 1, 3]);
    }

    #[test]
    fn gaps_bridge_only_up_to_max_gap() {
        let pts = vec![point("holding:0", "u16"), point("holding:6", "u16")];
        // hole of 5 registers (1..=5)
        assert_eq!(spans(&plan(&pts, 5)), vec![(Table::Holding, 0, 7)]);
        assert_eq!(
            spans(&plan(&pts, 4)),
            vec![(Table::Holding, 0, 1), (Table::Holding, 6, 1)]
        );
    }

    #[test]
    fn register_limit_splits_without_cutting_a_point() {
        // 124 single registers then an f64 at 124..=127: merging would need 128 > 125
        let mut pts: Vec<_> = (0..124)
            .map(|a| point(&format!("holding:{a}"), "u16"))
            .collect();
        pts.push(point("holding:124", "f64"));
        let b = plan(&pts, 0);
        assert_eq!(
            spans(&b),
            vec![(Table::Holding, 0, 124), (Table::Holding, 124, 4)]
        );
    }

    #[test]
    fn exactly_125_registers_fit_one_request() {
        let pts = vec![point("holding:0", "u16"), point("holding:124", "u16")];
        assert_eq!(spans(&plan(&pts, 200)), vec![(Table::Holding, 0, 125)]);
        let pts = vec![point("holding:0", "u16"), point("holding:125", "u16")];
        assert_eq!(plan(&pts, 200).len(), 2);
    }

    #[test]
    fn bit_tables_allow_2000() {
        let pts = vec![
            point("coil:0", "bool"),
            point("coil:1999", "bool"),
            point("coil:2000", "bool"),
        ];
        assert_eq!(
            spans(&plan(&pts, 2000)),
            vec![(Table::Coil, 0, 2000), (Table::Coil, 2000, 1)]
        );
    }

    #[test]
    fn overlapping_and_duplicate_points_share_a_request() {
        // a u32 at 10 and its low word read again as u16 at 11, plus the same point twice
        let pts = vec![
            point("holding:10", "u32"),
            point("holding:11", "u16"),
            point("holding:10", "u32"),
        ];
        let b = plan(&pts, 0);
        assert_eq!(spans(&b), vec![(Table::Holding, 10, 2)]);
        assert_eq!(b[0].points.len(), 3);
    }

    #[test]
    fn unsorted_input_is_planned_in_address_order() {
        let pts = vec![
            point("holding:50", "u16"),
            point("holding:0", "u16"),
            point("holding:49", "u16"),
        ];
        let b = plan(&pts, 0);
        assert_eq!(
            spans(&b),
            vec![(Table::Holding, 0, 1), (Table::Holding, 49, 2)]
        );
        assert_eq!(b[1].points, vec![2, 0]);
    }

    #[test]
    fn a_wide_point_covering_a_later_one_keeps_the_block_end() {
        // string of 4 regs at 0..=3 and a u16 at 1 inside it; then u16 at 4 adjacent
        let pts = vec![
            point("holding:0", "string"),
            point("holding:1", "u16"),
            point("holding:4", "u16"),
        ];
        assert_eq!(spans(&plan(&pts, 0)), vec![(Table::Holding, 0, 5)]);
    }
}
