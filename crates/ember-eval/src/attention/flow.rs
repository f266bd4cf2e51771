//! Attention flow (Abnar & Zuidema, 2020): the layers as a flow network whose edges carry
//! the residual-augmented attention ([`residual_attention`]) as capacities, and the flow
//! an output position receives from each input token as a maximum flow (Dinic's
//! algorithm). Unlike rollout, which multiplies the maps, flow takes the bottleneck of
//! every path.

use std::collections::VecDeque;

use super::analysis::residual_attention;
use super::maps::LayerMaps;

/// Capacities below this are no capacity.
const EPS: f64 = 1e-12;

/// A directed graph with paired residual edges.
struct Network {
    /// Per node, its edges' indices.
    adjacent: Vec<Vec<usize>>,
    to: Vec<usize>,
    capacity: Vec<f64>,
}

impl Network {
    fn new(nodes: usize) -> Self {
        Self {
            adjacent: vec![Vec::new(); nodes],
            to: Vec::new(),
            capacity: Vec::new(),
        }
    }

    /// An edge `from → to` of `capacity`, and its residual twin (index `^ 1`).
    fn edge(&mut self, from: usize, to: usize, capacity: f64) {
        for (a, b, c) in [(from, to, capacity), (to, from, 0.0)] {
            self.adjacent[a].push(self.to.len());
            self.to.push(b);
            self.capacity.push(c);
        }
    }

    /// The maximum flow from `source` to `sink` (consumes the capacities).
    fn max_flow(&mut self, source: usize, sink: usize) -> f64 {
        let mut total = 0.0;
        loop {
            let Some(level) = self.levels(source, sink) else {
                return total;
            };
            let mut next = vec![0usize; self.adjacent.len()];
            loop {
                let pushed = self.push(source, sink, f64::INFINITY, &level, &mut next);
                if pushed <= EPS {
                    break;
                }
                total += pushed;
            }
        }
    }

    /// BFS levels from `source` over edges with capacity, if `sink` is reachable.
    fn levels(&self, source: usize, sink: usize) -> Option<Vec<usize>> {
        let mut level = vec![usize::MAX; self.adjacent.len()];
        level[source] = 0;
        let mut queue = VecDeque::from([source]);
        while let Some(node) = queue.pop_front() {
            for &e in &self.adjacent[node] {
                let to = self.to[e];
                if self.capacity[e] > EPS && level[to] == usize::MAX {
                    level[to] = level[node] + 1;
                    queue.push_back(to);
                }
            }
        }
        (level[sink] != usize::MAX).then_some(level)
    }

    /// One blocking-flow augmentation along increasing levels.
    fn push(
        &mut self,
        node: usize,
        sink: usize,
        limit: f64,
        level: &[usize],
        next: &mut [usize],
    ) -> f64 {
        if node == sink {
            return limit;
        }
        while next[node] < self.adjacent[node].len() {
            let e = self.adjacent[node][next[node]];
            let to = self.to[e];
            if self.capacity[e] > EPS && level[to] == level[node] + 1 {
                let pushed = self.push(to, sink, limit.min(self.capacity[e]), level, next);
                if pushed > EPS {
                    self.capacity[e] -= pushed;
                    self.capacity[e ^ 1] += pushed;
                    return pushed;
                }
            }
            next[node] += 1;
        }
        0.0
    }
}

/// The attention flow into position `output` of the last of `layers` from every input
/// token: `flow[j]` is the maximum flow from token `j` below the first layer to `output`
/// above the last. `None` unless every layer covers the whole sequence and `output` is in
/// it.
pub fn attention_flow(layers: &[&LayerMaps], output: usize) -> Option<Vec<f64>> {
    let n = layers.first()?.keys;
    if output >= n || layers.iter().any(|m| m.keys != n || m.queries != n) {
        return None;
    }
    let matrices: Vec<Vec<Vec<f64>>> = layers.iter().map(|m| residual_attention(m)).collect();
    // Node `l · n + i`: position `i` below layer `l` (layer `layers.len()` is the top).
    let node = |l: usize, i: usize| l * n + i;
    let build = || {
        let mut net = Network::new((layers.len() + 1) * n);
        for (l, a) in matrices.iter().enumerate() {
            for (i, row) in a.iter().enumerate() {
                for (j, &c) in row.iter().enumerate() {
                    if c > EPS {
                        net.edge(node(l, j), node(l + 1, i), c);
                    }
                }
            }
        }
        net
    };
    let top = node(layers.len(), output);
    Some((0..n).map(|j| build().max_flow(node(0, j), top)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-head layer over `n` tokens with causal random-ish rows.
    fn layer(n: usize, seed: u64) -> LayerMaps {
        let mut state = seed;
        let mut probs = Vec::new();
        for i in 0..n {
            let raw: Vec<f32> = (0..n)
                .map(|j| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if j <= i {
                        ((state >> 33) % 1000 + 1) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            let sum: f32 = raw.iter().sum();
            probs.extend(raw.iter().map(|x| x / sum));
        }
        LayerMaps {
            heads: 1,
            queries: n,
            keys: n,
            probs,
        }
    }

    #[test]
    fn one_layer_flow_is_the_edge_and_two_layers_sum_their_path_bottlenecks() {
        let n = 6;
        let (a, b) = (layer(n, 1), layer(n, 2));
        let (ra, rb) = (residual_attention(&a), residual_attention(&b));
        for output in 0..n {
            let flow = attention_flow(&[&a], output).unwrap();
            for j in 0..n {
                assert!((flow[j] - ra[output][j]).abs() < 1e-9);
            }
            // Two layers: the paths j → k → output share no edge, so the maximum flow is
            // the sum of each path's bottleneck.
            let flow = attention_flow(&[&a, &b], output).unwrap();
            for j in 0..n {
                let want: f64 = (0..n).map(|k| ra[k][j].min(rb[output][k])).sum();
                assert!((flow[j] - want).abs() < 1e-9, "{} vs {want}", flow[j]);
            }
        }
    }

    #[test]
    fn deeper_flow_is_bounded_by_every_cut() {
        let n = 5;
        let layers: Vec<LayerMaps> = (0..3).map(|s| layer(n, 10 + s)).collect();
        let refs: Vec<&LayerMaps> = layers.iter().collect();
        let top = residual_attention(&layers[2]);
        let bottom = residual_attention(&layers[0]);
        let flow = attention_flow(&refs, n - 1).unwrap();
        for j in 0..n {
            // Cut above the input token, and cut below the output position.
            let out_of_j: f64 = (0..n).map(|k| bottom[k][j]).sum();
            let into_output: f64 = top[n - 1].iter().sum();
            assert!(flow[j] > 0.0 && flow[j] <= out_of_j + 1e-9 && flow[j] <= into_output + 1e-9);
        }
        assert!(attention_flow(&refs, n).is_none());
    }
}
