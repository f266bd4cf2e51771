//! Block masks: a [`MaskMod`] summarised per `[q_block, kv_block]` tile, so attention can
//! skip fully masked tiles and drop the element mask from fully visible ones.

use super::mask_mod::{MaskMod, TileKind};

/// The tile classification of a mask over a `seq_q × seq_kv` score matrix.
#[derive(Debug, Clone)]
pub struct BlockMask {
    /// Rows per query tile.
    pub q_block: usize,
    /// Columns per key tile.
    pub kv_block: usize,
    /// Absolute position of query row 0 (`seq_kv - seq_q`).
    pub q_offset: usize,
    pub seq_q: usize,
    pub seq_kv: usize,
    /// Sequences and heads the classification was computed for (1 where the mask does
    /// not vary along that axis).
    pub batches: usize,
    pub heads: usize,
    /// `[batches][heads][q_tiles][kv_tiles]`, flattened.
    kinds: Vec<TileKind>,
}

impl BlockMask {
    /// Classifies every tile of `mask` for `batch` sequences and `n_heads` heads.
    pub fn new(
        mask: &MaskMod,
        batch: usize,
        n_heads: usize,
        seq_q: usize,
        seq_kv: usize,
        q_block: usize,
        kv_block: usize,
    ) -> Self {
        assert!(q_block > 0 && kv_block > 0, "block sizes must be positive");
        let batches = if mask.varies_with_batch() { batch } else { 1 };
        let heads = if mask.varies_with_head() { n_heads } else { 1 };
        let q_offset = seq_kv - seq_q;
        let mut this = Self {
            q_block,
            kv_block,
            q_offset,
            seq_q,
            seq_kv,
            batches,
            heads,
            kinds: Vec::new(),
        };
        let (q_tiles, kv_tiles) = this.tiles();
        let mut kinds = Vec::with_capacity(batches * heads * q_tiles * kv_tiles);
        for b in 0..batches {
            for h in 0..heads {
                for qt in 0..q_tiles {
                    for kt in 0..kv_tiles {
                        kinds.push(mask.tile(b, h, this.q_range(qt), this.kv_range(kt)));
                    }
                }
            }
        }
        this.kinds = kinds;
        this
    }

    /// Number of query tiles and key tiles.
    pub fn tiles(&self) -> (usize, usize) {
        (
            self.seq_q.div_ceil(self.q_block),
            self.seq_kv.div_ceil(self.kv_block),
        )
    }

    /// Absolute query positions of query tile `qt`.
    pub fn q_range(&self, qt: usize) -> std::ops::Range<usize> {
        let start = qt * self.q_block;
        self.q_offset + start..self.q_offset + (start + self.q_block).min(self.seq_q)
    }

    /// Key positions of key tile `kt`.
    pub fn kv_range(&self, kt: usize) -> std::ops::Range<usize> {
        let start = kt * self.kv_block;
        start..(start + self.kv_block).min(self.seq_kv)
    }

    /// The kind of tile `(qt, kt)` for sequence `b` and head `h` (taken modulo the axes
    /// the mask does not vary along).
    pub fn kind(&self, b: usize, h: usize, qt: usize, kt: usize) -> TileKind {
        let (q_tiles, kv_tiles) = self.tiles();
        let (b, h) = (b % self.batches, h % self.heads);
        self.kinds[((b * self.heads + h) * q_tiles + qt) * kv_tiles + kt]
    }

    /// The kind of tile `(qt, kt)` across every sequence and head: `Empty` only if empty
    /// everywhere, `Full` only if full everywhere.
    pub fn joint_kind(&self, qt: usize, kt: usize) -> TileKind {
        let mut kinds = (0..self.batches)
            .flat_map(|b| (0..self.heads).map(move |h| (b, h)))
            .map(|(b, h)| self.kind(b, h, qt, kt));
        let first = kinds.next().expect("at least one sequence and head");
        kinds.fold(
            first,
            |acc, k| if acc == k { acc } else { TileKind::Partial },
        )
    }

    /// `(empty, partial, full)` tile counts over every sequence and head.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.kinds.iter().fold((0, 0, 0), |(e, p, f), k| match k {
            TileKind::Empty => (e + 1, p, f),
            TileKind::Partial => (e, p + 1, f),
            TileKind::Full => (e, p, f + 1),
        })
    }
}
