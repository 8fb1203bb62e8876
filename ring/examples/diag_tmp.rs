use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use starling_ring::{NodeStatus, Ring, RingNode, DEFAULT_VNODES};
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (nodes, seed) = (args[0], args[1] as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ring = Ring::new([]);
    let mut order = Vec::new();
    for k in 0..nodes {
        let id: u128 = rng.gen();
        order.push(id);
        let tokens = ring.allocate_tokens(id, DEFAULT_VNODES, seed);
        let node = RingNode { id, tokens, zone: None, status: NodeStatus::Normal };
        ring = Ring::new(ring.nodes().cloned().chain([node]));
        let n = (k + 1) as f64;
        let p = ring.ownership(1);
        let r = ring.ownership(3);
        let pv: Vec<f64> = order.iter().map(|id| p[id] * n).collect();
        let rv: Vec<f64> = order.iter().map(|id| r[id] * n / 3f64.min(n)).collect();
        let sp = |v: &[f64]| {
            v.iter().cloned().fold(0. / 0., f64::max) / v.iter().cloned().fold(0. / 0., f64::min)
        };
        if false {
            println!("n={} prim {:.3} rep {:.3}", k + 1, sp(&pv), sp(&rv));
            println!("  prim {:?}", pv.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>());
            println!("  rep  {:?}", rv.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>());
        } else {
            let am = |v: &[f64]| {
                let mx = v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
                let mn = v.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap();
                format!(
                    "max#{}={:.3} min#{}={:.3} new={:.3}",
                    mx.0,
                    mx.1,
                    mn.0,
                    mn.1,
                    v[v.len() - 1]
                )
            };
            println!(
                "n={} prim {:.3} rep {:.3}   P {}   R {}",
                k + 1,
                sp(&pv),
                sp(&rv),
                am(&pv),
                am(&rv)
            );
        }
    }
}
